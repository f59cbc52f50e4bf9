"""A test-only hook loaded into a real Celery worker with `--include` (no product change): the
first INSERT into the inbox that a run of `inbox.drain_fallback` makes, after it took its entries
from the fallback store and before anything commits, announces itself (its pid RPUSHed onto
HELD) and then blocks for good, so a test can SIGKILL the worker at exactly that point.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun
from sqlalchemy import event
from sqlalchemy.engine import Engine

HELD = "tests:drain-held"
DRAIN_TASK = "inbox.drain_fallback"

_in_drain = threading.local()


@task_prerun.connect
def _starts(task: Any = None, **_: Any) -> None:
    _in_drain.value = task is not None and task.name == DRAIN_TASK


@task_postrun.connect
def _ends(**_: Any) -> None:
    _in_drain.value = False


@event.listens_for(Engine, "before_cursor_execute")
def _hold(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    inserts_a_delivery = statement.lstrip().upper().startswith("INSERT INTO") and "webhook_inbox" in statement
    if getattr(_in_drain, "value", False) and inserts_a_delivery:
        redis.Redis.from_url(os.environ["REDIS_URL"]).rpush(HELD, os.getpid())
        threading.Event().wait()  # until the test kills this process
