"""What a worker or beat process does as it starts, and around every task.

- Logging is this project's (structlog; `models.logs`), not Celery's own set-up.
- Before a worker or beat starts consuming or scheduling, PostgreSQL and Redis must answer: a
  wrong URL stops it with one line and exit code 2 instead of retrying for ever.
- Before a worker's pool forks, what it will share with the pool is frozen for the collector.
- Every line a task logs carries its context: task id and name, and for an inbox row its id,
  source, provider event id and type (the pipeline adds the last three once it has locked the
  row), then `task.finished` with the outcome. Payloads, tokens and signatures are never bound.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import structlog
from celery import Task
from celery.signals import beat_init, setup_logging, task_postrun, task_prerun, worker_init

from models.connectivity import exit_unless_reachable
from models.logs import LogConfigError, bind_event, clear_event, configure_logging
from models.settings import load_settings

log = structlog.get_logger(__name__)

# Task arguments that may be bound to log lines: identifiers only, never payloads or details.
_LOGGED_ARGUMENTS = {
    "inbox_id": "inbox_id",
    "source": "source",
    "external_id": "provider_event_id",
    "event_type": "event_type",
    "idempotency_key": "idempotency_key",
    "clerk_user_id": "clerk_user_id",
    "operation": "operation",
}


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    try:
        configure_logging(level=loglevel)
    except LogConfigError as exc:  # a bad LOG_FORMAT: one line and exit code 2, like any setting
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@worker_init.connect
def _check_servers_before_the_worker_starts(**_: Any) -> None:
    exit_unless_reachable(load_settings)


@worker_init.connect
def _freeze_what_the_pool_shares(**_: Any) -> None:
    """Keep the objects made so far (modules, the app, its configuration) out of the garbage
    collector's reach, before the pool forks (Python's documentation of `gc.freeze`).

    The pool processes share them with the main process, copy-on-write; a full collection in
    either writes into every object it examines, and the pages holding them became private
    copies: bench_memory.py saw the pool process's and the main process's USS each step up by
    ~25 MiB at once, a few thousand events in. Frozen objects are never examined."""
    gc.freeze()


@beat_init.connect
def _check_servers_before_beat_starts(**_: Any) -> None:
    exit_unless_reachable(load_settings)


@task_prerun.connect
def _bind_task_context(task_id: str, task: Task, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    clear_event()
    arguments = kwargs or {}
    bind_event(
        task_id=task_id,
        task=task.name,
        **{field: arguments[name] for name, field in _LOGGED_ARGUMENTS.items() if name in arguments},
    )


@task_postrun.connect
def _log_outcome(retval: Any = None, state: str | None = None, **_: Any) -> None:
    outcome = retval.get("status") if isinstance(retval, dict) else None
    log.info("task.finished", outcome=outcome or (state or "unknown").lower(), state=state)
    clear_event()
