"""The pipeline's Celery tasks: process one inbox row, drain the fallback store into the inbox,
sweep. Each only delegates; all but the drain (one transaction per entry) are one transaction
(`TransactionalTask`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypedDict, TypeVar

from sqlalchemy.orm import Session

from celery_ext.batching import traced_batching_strategy
from messaging.celery_config import (
    DRAIN_FALLBACK_TASK,
    INGEST_WEBHOOK_TASK,
    PROCESS_RETRY_BACKOFF_MAX,
    PROCESS_WEBHOOK_TASK,
    SWEEP_INBOX_TASK,
)
from messaging.ingest_message import IngestSigner
from models.inbox import record_delivery
from models.settings import process_settings
from worker import database
from worker.celery_app import app
from worker.errors import TRANSIENT_ERRORS
from worker.inbox import fallback_drain, runs
from worker.inbox.processing import apply_row, claim_row
from worker.inbox.queue_probe import broker_view
from worker.inbox.signed_ingest import open_delivery
from worker.inbox.sweep import sweep
from worker.task_base import TransactionalTask, send_after_commit

_P = ParamSpec("_P")
_R = TypeVar("_R", covariant=True)

log = logging.getLogger(__name__)

PROCESS_MAX_RETRIES = 8
# A copy of the message that finds another run holding the row tries again after this long
# (with jitter): the other run may fail and need this copy, so it is never just dropped.
BUSY_RETRY_SECONDS = 2.0


class RowBusy(Exception):
    """Another run holds the row's lock."""


class InboxTask(TransactionalTask[_P, _R]):
    """Records how each run of `webhooks.process` ended when its own transaction did not commit,
    in a transaction of its own (`worker.inbox.runs`): a retry is due later; a transient error
    that outlasted the retries is re-driven later by the sweeper (never dead-lettered: the
    database may simply have been away); any other error is the dead letter (`failed`)."""

    abstract = True

    def retry(self, *args: Any, **options: Any) -> Any:
        """Celery's retry, its countdown never longer than the sweeper's pending age: a row whose
        fault has ended is tried again within the sweeper's bound, whatever the backoff reached
        while the fault lasted (the worker holds the retry, so the sweeper leaves its row alone)."""
        if options.get("countdown") is not None:
            options["countdown"] = min(options["countdown"], process_settings().sweep_pending_after_seconds)
        return super().retry(*args, **options)

    def on_retry(self, exc: Exception, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any) -> None:
        if isinstance(exc, RowBusy):
            return  # the run holding the row records its own end
        due_at = datetime.now(UTC) + timedelta(seconds=_countdown(einfo))
        _record(lambda session: runs.record_retry(session, kwargs["inbox_id"], exc, due_at))

    def on_failure(
        self, exc: Exception, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        inbox_id = kwargs["inbox_id"]
        if isinstance(exc, RowBusy):
            return  # retries ran out while other runs held the row: the sweeper takes over
        if isinstance(exc, TRANSIENT_ERRORS):
            chain = PROCESS_MAX_RETRIES + 1
            _record(lambda session: runs.record_exhausted(session, inbox_id, exc, runs_per_chain=chain))
        else:
            _record(lambda session: runs.record_failure(session, inbox_id, exc))


def _countdown(einfo: Any) -> float:
    when = getattr(einfo.exception, "when", None)  # the Retry's countdown, or its ETA
    if isinstance(when, datetime):
        return max((when - datetime.now(when.tzinfo or UTC)).total_seconds(), 0.0)
    return float(when or 0)


def _record(write: Callable[[Session], None]) -> None:
    try:
        with database.session_factory().begin() as session:
            write(session)
    except Exception:
        # The database is what failed: the row stays pending and the sweeper brings it back
        # once the database answers (its run then counts the lost end as a crash).
        log.exception("could not record how a run of an inbox row ended")


class RetryOptions(TypedDict):
    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: int
    retry_backoff_max: int
    retry_jitter: bool


# Transient errors retry with exponential backoff (2, 4, 8 ... s), capped, with jitter.
RETRY_TRANSIENT_ERRORS: RetryOptions = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": PROCESS_RETRY_BACKOFF_MAX,
    "retry_jitter": True,
}


# The messages of `webhooks.process` a worker holds (its prefetch window) go to a pool process
# together, each run as its own task (`traced_batching_strategy`): one pool round trip for them.
webhook_batching_strategy = traced_batching_strategy(max_batch=8)


@app.task(
    name=PROCESS_WEBHOOK_TASK,
    base=InboxTask,
    bind=True,
    max_retries=PROCESS_MAX_RETRIES,
    Strategy="worker.inbox.tasks:webhook_batching_strategy",
    **RETRY_TRANSIENT_ERRORS,
)
def process_webhook(task: InboxTask[..., dict[str, Any]], inbox_id: int) -> dict[str, Any]:
    """Take the row (or try again shortly if another run has it), record the run's start in a
    transaction of its own (which also reads the row), then apply the row in the task's
    transaction."""
    if not claim_row(task.session, inbox_id):
        raise task.retry(exc=RowBusy(inbox_id), countdown=BUSY_RETRY_SECONDS * (1 + random.random()))
    with database.autocommit_connection() as bookkeeping:
        started = runs.start_run(bookkeeping, inbox_id)
    if isinstance(started, runs.Skip):
        return started.answer
    return apply_row(task.session, started)


@app.task(name=DRAIN_FALLBACK_TASK, bind=True)
def drain_fallback(task: Any) -> dict[str, int]:
    """Store what the receiver queued in the fallback store while PostgreSQL was down, then
    process each like any other delivery (worker/inbox/fallback_drain.py)."""
    settings = process_settings()
    drained = fallback_drain.drain(
        fallback_drain.store_for_process(settings),
        IngestSigner(settings.ingest_signing_keys),
        database.session_factory(),
        lambda inbox_id: app.signature(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": inbox_id}).apply_async(),
        settings.fallback_claim_idle_seconds,
    )
    return drained.summary()


# Kept only to drain the `webhooks.ingest` messages a receiver older than the fallback store
# queued: without a consumer Celery would discard them, and each holds a delivery answered 200.
# Nothing sends it any more; remove it once no such message can be left in a deployment.
# The delivery lives only in this message until it is stored: keep trying (max_retries=None).
@app.task(name=INGEST_WEBHOOK_TASK, base=TransactionalTask, bind=True, max_retries=None, **RETRY_TRANSIENT_ERRORS)
def ingest_webhook(task: TransactionalTask[..., dict[str, Any]], **message: Any) -> dict[str, Any]:
    """Store a verified delivery an older receiver queued as a Celery message (PostgreSQL was
    down), then process it like any other. Only a message the receiver signed is stored."""
    delivery = open_delivery(task.request.id or "", message)
    if delivery is None:
        return {"status": "refused"}
    session = task.session
    inbox_id = record_delivery(session, **delivery)
    if inbox_id is None:
        return {"status": "duplicate"}
    send_after_commit(session, PROCESS_WEBHOOK_TASK, inbox_id=inbox_id)
    return {"status": "accepted", "inbox_id": inbox_id}


# Retried like the others on a transient error: workers do not pre-ping their pooled connections,
# so the first task on a connection PostgreSQL dropped fails once and must not lose the pass.
@app.task(name=SWEEP_INBOX_TASK, base=TransactionalTask, bind=True, max_retries=2, **RETRY_TRANSIENT_ERRORS)
def sweep_inbox(task: TransactionalTask[..., dict[str, int]]) -> dict[str, int]:
    """Re-enqueue rows left `pending` whose message is gone (Redis lost it, a worker died)."""
    settings = process_settings()
    view = broker_view(settings.redis_url.get_secret_value())
    requeued = sweep(task.session, settings, oldest_waiting_id=view.oldest_waiting_id, held_ids=view.held_ids)
    return {"requeued": len(requeued)}
