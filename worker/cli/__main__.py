"""`python -m worker.cli ...`, the same as the `pedro-webhooks` console script."""

from worker.cli import main

main()
