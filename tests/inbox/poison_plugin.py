"""Loaded into a real test worker with `--include`: makes chosen inbox rows poison.

A run of `webhooks.process` for an inbox id listed in POISON_INBOX_IDS kills its own pool
process (SIGKILL, as the kernel's OOM killer would) a moment after it starts, while the test
keeps the run busy inside its transaction. A run that returns before then disarms the timer.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from celery.signals import task_postrun, task_prerun

KILL_AFTER_SECONDS = 0.5


def _poison_ids() -> set[int]:
    return {int(part) for part in os.environ.get("POISON_INBOX_IDS", "").split(",") if part.strip()}


def _die(_signum: int, _frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@task_prerun.connect
def _arm(task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    if task is not None and task.name == "webhooks.process" and (kwargs or {}).get("inbox_id") in _poison_ids():
        signal.signal(signal.SIGALRM, _die)
        signal.setitimer(signal.ITIMER_REAL, KILL_AFTER_SECONDS)


@task_postrun.connect
def _disarm(**_: Any) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
