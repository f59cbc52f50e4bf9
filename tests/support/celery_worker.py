"""A real Celery worker in a subprocess, against the test database and Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from celery import Celery
from celery.result import AsyncResult
from celery.states import READY_STATES


class WorkerProcess:
    def __init__(
        self,
        producer: Celery,
        queues: str = "webhooks,usage,maintenance",
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        loglevel: str = "WARNING",
        output: Path | None = None,
    ):
        self.producer = producer
        self.env = {**os.environ, **(env or {})}
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            f"--loglevel={loglevel}",
            f"--queues={queues}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            f"--hostname={self.name}",
            "--without-gossip",
            "--without-mingle",
            *extra_args,
        ]
        self.output = output  # where its stdout and stderr go (default: the test's own)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        if self.output is None:
            self.process = subprocess.Popen(self.command, env=self.env)
        else:
            with self.output.open("ab") as out:
                self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited with {self.process.returncode}")
            if self.producer.control.ping(destination=[self.name], timeout=0.5):
                return
        self.stop()
        raise RuntimeError("celery worker did not answer a ping in time")

    def pool_children(self) -> list[int]:
        """Pids of the prefork pool's child processes (where tasks run)."""
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def kill(self) -> None:
        """SIGKILL the main process and every pool child: no warm shutdown, no ack."""
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for pid in [*(child.pid for child in children), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # warm shutdown: finish the running tasks
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_for_state(result: AsyncResult, state: str, timeout: float = 30) -> None:
    """Poll a task's state (from the result backend) until it is `state`, e.g. RETRY."""
    deadline = time.monotonic() + timeout
    while (current := result.state) != state:
        assert current not in READY_STATES, f"task ended {current} without reaching {state}: {result.result!r}"
        assert time.monotonic() < deadline, f"task still {current}"
        time.sleep(0.05)
