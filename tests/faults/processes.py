"""The Procfile's processes, each run as the platform would run it and killed as a fault would.

Every process is `sh -c '<its Procfile command>'` in a process group of its own, with its output
appended to a log file; `kill()` SIGKILLs the whole group at once (a gunicorn master and its
workers, a Celery worker and its pool), as an OOM killer or a lost machine would.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.support.servers import PROJECT_ROOT


@dataclass
class ProcfileProcess:
    name: str
    command: str
    env: dict[str, str]
    log_path: Path
    ready: Callable[[ProcfileProcess], bool]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log_offset: int = field(default=0, repr=False)

    def start(self) -> None:
        assert not self.running(), f"{self.name} is running already"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {self.command}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                ["sh", "-c", self.command],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own: kill() reaches every child
            )
        self.starts += 1

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready(self):
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_since_start()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log_since_start()}")
            time.sleep(0.1)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL every process of the group at once (no shutdown, no ack, no goodbye)."""
        self._signal_group(signal.SIGKILL)
        self._reap()

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (warm shutdown), then SIGKILL whatever is left."""
        self._signal_group(signal.SIGTERM)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_since_start(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def _reap(self, timeout: float = 20) -> None:
        """Wait for the leader, then until no live (non-zombie) process is left in the group."""
        if self.process is None:
            return
        self.process.wait(timeout)
        group = self.process.pid
        deadline = time.monotonic() + timeout
        while leftovers := _live_members(group):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {leftovers} survived SIGKILL")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            time.sleep(0.05)
        self.process = None


def _live_members(group: int) -> list[int]:
    members = []
    for process in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.info["pid"]) == group:
                members.append(process.info["pid"])
    return members


def web_ready(port: int) -> Callable[[ProcfileProcess], bool]:
    def ready(_: ProcfileProcess) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    return ready


def log_says(pattern: str) -> Callable[[ProcfileProcess], bool]:
    """Ready once this start's log matches `pattern` (e.g. the Celery worker's `ready.`)."""
    expression = re.compile(pattern)
    return lambda process: bool(expression.search(process.log_since_start()))
