"""Run `pedro-webhooks` in this process (CliRunner) or as an operator does (a process of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from ops.cli import main
from tests.support.servers import PROJECT_ROOT

COMMAND = Path(sys.executable).parent / "pedro-webhooks"  # the console script pip installed


def invoke(*args: str, local_dir: Path | None = None) -> Result:
    """In this process, with the test run's environment. `--local-dir` points at an empty folder
    unless given: a developer's own `run` (its .local/run.env) must not leak into a test."""
    folder = local_dir or Path("/nonexistent-local-dir")
    return CliRunner().invoke(main, ["--local-dir", str(folder), *args], catch_exceptions=False)


def run_command(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = PROJECT_ROOT,
    timeout: float = 120,
    local_dir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """The installed console script in a process of its own (`--local-dir` as for `invoke`)."""
    return subprocess.run(
        [str(COMMAND), "--local-dir", str(local_dir or "/nonexistent-local-dir"), *args],
        env=env if env is not None else dict(os.environ),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
