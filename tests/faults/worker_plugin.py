"""Fault hooks loaded into real Celery workers with Celery's `--include` option: no product change.

- Poison: a run whose SQL names a marker of the Redis set POISON_MARKERS (e.g. a Clerk user id)
  SIGKILLs its pool process mid-handler, every time; POISON_KILLS counts the kills.
- Probe: the runs that start (STARTS) and end (RUNS) are appended to Redis lists.
- Block: while BLOCK_RUNS (BLOCK_USAGE) counts down, a `webhooks.process` run past its recorded
  start (a usage batch at its first write) is listed in BLOCKED (BLOCKED_USAGE) and waits, its
  transaction open, until the file FAULT_RELEASE_FILE exists or it is killed.
The hooks read REDIS_URL (the broker the worker uses) when they first run, never at import.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun
from sqlalchemy import event
from sqlalchemy.engine import Engine

POISON_MARKERS = "faults:poison-markers"
POISON_KILLS = "faults:poison-kills"
RUNS = "faults:runs"
STARTS = "faults:starts"  # every `webhooks.process` run that started: {"inbox_id", "pid", "at"}
BLOCK_RUNS = "faults:block-runs"  # how many more `webhooks.process` runs to block
BLOCK_USAGE = "faults:block-usage"  # how many more usage batches to block
BLOCKED = "faults:blocked"  # the inbox ids of the runs blocked
BLOCKED_USAGE = "faults:blocked-usage"  # the pids of the usage batches blocked
CRASHES = "faults:crashes"  # {"inbox_id", "crashes"}: what each run of a blocked row started with
RELEASE_FILE_VARIABLE = "FAULT_RELEASE_FILE"
PROCESS_TASK = "webhooks.process"

# The `usage` process (its Procfile command names its hostname): only its batches block as usage.
_IS_USAGE_WORKER = any(argument.startswith("--hostname=usage@") for argument in sys.argv)
_run: dict[str, Any] = {}  # the run in progress in this (pool) process
_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    pid = os.getpid()  # one client per process: a connection never crosses a fork
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _clients[pid]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Probe: every `webhooks.process` run that starts is appended to STARTS, and every one that ends
# (success, retry or failure; a killed run never ends) to RUNS as JSON
# `{"inbox_id", "state", "result"}`, so a test can wait for a run instead of sleeping. A row blocked
# earlier has the `crashes` each later run's start left appended to CRASHES.
@task_prerun.connect
def _run_starts(task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    _run.clear()
    if task is not None and task.name == PROCESS_TASK:
        markers = {_text(marker) for marker in _redis().smembers(POISON_MARKERS)}
        _run.update(inbox_id=(kwargs or {}).get("inbox_id"), markers=markers)
        _redis().rpush(STARTS, json.dumps({"inbox_id": _run["inbox_id"], "pid": os.getpid(), "at": time.time()}))


@task_postrun.connect
def _run_ends(
    task: Any = None, kwargs: dict[str, Any] | None = None, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    if task is not None and task.name == PROCESS_TASK:
        record = {"inbox_id": (kwargs or {}).get("inbox_id"), "state": state, "result": repr(retval)[:300]}
        _redis().rpush(RUNS, json.dumps(record))
    _run.clear()


def _record_crashes_if_blocked_before(inbox_id: int) -> None:
    """For a row blocked (and so killed) earlier: the `crashes` this run's start left, appended to
    CRASHES. Read as soon as the start is committed, before the run's work: a run that ends the
    row `unmatched` (a payment waiting for its user) may be killed before it is recorded, and the
    replay that follows starts the row's count again from 0."""
    from sqlalchemy import select

    from models.inbox import WebhookInbox
    from worker import database

    try:
        client = _redis()
        if client.lpos(BLOCKED, str(inbox_id)) is None:
            return
        with database.session_factory()() as session:
            crashes = session.scalar(select(WebhookInbox.crashes).where(WebhookInbox.id == inbox_id))
        client.rpush(CRASHES, json.dumps({"inbox_id": inbox_id, "crashes": crashes}))
    except Exception:
        return  # Redis or PostgreSQL away: a probe never changes the run it watches


# Poison: while a `webhooks.process` run is in progress, the first SQL statement whose parameters
# name a marker of POISON_MARKERS SIGKILLs the pool process, every time, as an out-of-memory kill
# in the middle of the handler would. It fires inside the handler's work, after anything the run
# records when it starts: a kill at `task_prerun`, before the task's own code, would test nothing
# the task could ever see.
@event.listens_for(Engine, "before_cursor_execute")
def _poison(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    markers = _run.get("markers")
    if markers and any(marker in repr(parameters) for marker in markers):
        _redis().incr(POISON_KILLS)
        os.kill(os.getpid(), signal.SIGKILL)


# Block: work in flight by construction. A `webhooks.process` run blocks at the first statement
# after the one that records its start (`running_since` committed: the row is mid-run); a usage
# batch (no `webhooks.process` run in this process) at its first statement on usage_requests,
# inside its transaction, before anything of it committed.
@event.listens_for(Engine, "before_cursor_execute")
def _block(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    if "inbox_id" in _run:
        if _run.get("started") and not _run.get("checked"):
            _run["checked"] = True
            _record_crashes_if_blocked_before(_run["inbox_id"])
            _block_if_armed(BLOCK_RUNS, BLOCKED, str(_run["inbox_id"]))
        elif "running_since" in statement and "attempts" in statement:
            _run["started"] = True  # the start's UPDATE: the next statement is the handler's
    elif "usage_requests" in statement and _IS_USAGE_WORKER:
        _block_if_armed(BLOCK_USAGE, BLOCKED_USAGE, str(os.getpid()))


def _block_if_armed(counter: str, record: str, what: str) -> None:
    client = _redis()
    try:
        if int(client.get(counter) or 0) <= 0 or client.decr(counter) < 0:
            return
        client.rpush(record, what)
    except redis.RedisError:
        return  # Redis restarted under this process: nothing is armed on an empty Redis
    release = os.environ.get(RELEASE_FILE_VARIABLE, "")
    while not (release and os.path.exists(release)):
        time.sleep(0.05)  # the test kills this process, or releases it once the fault is in place
