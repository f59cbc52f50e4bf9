"""`python -m ops.cli ...`, the same as the `pedro-webhooks` console script."""

from ops.cli import main

main()
