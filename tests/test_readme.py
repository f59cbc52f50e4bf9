"""The README's two commands are the ones CI and people actually run."""

from __future__ import annotations

import re

from tests.support.servers import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def _command_after(label: str) -> str:
    match = re.search(rf"{label}.*?```(?:sh|bash)?\n(.+?)\n```", README, re.S)
    assert match, f"README has no command block after {label!r}"
    return match.group(1).strip()


def test_readme_opens_with_the_run_and_test_commands():
    head = README[:1500]
    assert "pedro-webhooks run" in _command_after("Run the service") and "Run the service" in head
    assert "pytest" in _command_after("Run the tests") and "Run the tests" in head


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert _command_after("Run the tests") in ci.splitlines()
