"""Webhook tasks: process one inbox row, store a delivery the receiver could not, sweep.

`webhooks.process(inbox_id)` is one transaction: lock the row (SKIP LOCKED: a second copy of
the message finds it busy and leaves), return if it is no longer pending, apply the handler for
its (source, type), set the final status, commit. The effect and the status commit together or
not at all, so a redelivered message changes nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.inbox import InboxStatus, WebhookInbox, record_delivery
from worker import clerk_users  # noqa: F401  (registers its handlers)
from worker import asaas, clerk_billing  # noqa: F401  (register their handlers)
from worker import database
from worker.celery_app import app
from worker.celery_config import MAX_RETRY_COUNTDOWN
from worker.errors import TRANSIENT_ERRORS, describe
from worker.handlers import Delivery, Outcome, find_handler
from worker.task_base import TransactionalTask, send_after_commit

log = logging.getLogger(__name__)

PROCESS_MAX_RETRIES = 8
SWEEP_BATCH = 1000


class InboxTask(TransactionalTask):
    """Records each failed try on the inbox row, in a transaction of its own (the task's own
    transaction was rolled back): `attempts` and `last_error` on a retry, and `failed` (the
    dead letter) when retries are exhausted or the error is not transient."""

    abstract = True

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        _record_failed_try(kwargs["inbox_id"], exc, final=False)

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        _record_failed_try(kwargs["inbox_id"], exc, final=True)


# Transient errors retry with exponential backoff (2, 4, 8 ... s), capped, with jitter.
RETRY_TRANSIENT_ERRORS = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": MAX_RETRY_COUNTDOWN,
    "retry_jitter": True,
}


@app.task(
    name="webhooks.process", base=InboxTask, bind=True, max_retries=PROCESS_MAX_RETRIES, **RETRY_TRANSIENT_ERRORS
)
def process_webhook(task: TransactionalTask, inbox_id: int) -> dict[str, Any]:
    session = task.session
    row = session.execute(
        select(WebhookInbox).where(WebhookInbox.id == inbox_id).with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if row is None:
        return {"inbox_id": inbox_id, "status": "busy_or_missing"}
    if row.status != InboxStatus.PENDING:
        return {"inbox_id": inbox_id, "status": row.status}
    outcome = apply_delivery(session, row)
    row.status = outcome.status
    row.detail = outcome.detail
    row.attempts += 1
    row.last_attempt_at = row.processed_at = func.now()
    row.last_error = None
    return {"inbox_id": inbox_id, "status": outcome.status.value}


def apply_delivery(session: Session, row: WebhookInbox) -> Outcome:
    handler = find_handler(row.source, row.event_type)
    if handler is None:
        return Outcome(InboxStatus.IGNORED, f"no handler for {row.source} {row.event_type}")
    delivery = Delivery(row.id, row.source, row.external_id, row.event_type, row.payload)
    return handler(session, delivery)


def _record_failed_try(inbox_id: int, error: BaseException, *, final: bool) -> None:
    values: dict[str, Any] = {
        "attempts": WebhookInbox.attempts + 1,
        "last_error": describe(error),
        "last_attempt_at": func.now(),
    }
    if final:
        values["status"] = InboxStatus.FAILED.value
    try:
        with database.session_factory().begin() as session:
            session.execute(
                update(WebhookInbox)
                .where(WebhookInbox.id == inbox_id, WebhookInbox.status == InboxStatus.PENDING)
                .values(**values)
            )
    except Exception:
        # The database is what failed: the row stays pending and the sweep brings it back.
        log.exception("could not record the failed try of inbox row %s", inbox_id)


# The delivery lives only in this message until it is stored: keep trying (max_retries=None).
@app.task(name="webhooks.ingest", base=TransactionalTask, bind=True, max_retries=None, **RETRY_TRANSIENT_ERRORS)
def ingest_webhook(
    task: TransactionalTask, source: str, external_id: str, event_type: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """Store a verified delivery the receiver could not store (PostgreSQL was down), then
    process it like any other."""
    session = task.session
    inbox_id = record_delivery(
        session, source=source, external_id=external_id, event_type=event_type, payload=payload
    )
    if inbox_id is None:
        return {"status": "duplicate"}
    send_after_commit(session, process_webhook.s(inbox_id=inbox_id))
    return {"status": "accepted", "inbox_id": inbox_id}


@app.task(name="inbox.sweep", base=TransactionalTask, bind=True)
def sweep_inbox(task: TransactionalTask) -> dict[str, int]:
    """Re-enqueue rows left `pending` (Redis lost the message, a worker died before its ack).

    A row that is retrying is left to its retry chain for up to the longest countdown.
    Re-enqueueing is harmless: processing is idempotent.
    """
    session = task.session
    settings = database.settings()
    stale = func.now() - timedelta(seconds=settings.sweep_pending_after_seconds)
    retrying = func.now() - timedelta(seconds=settings.sweep_pending_after_seconds + MAX_RETRY_COUNTDOWN)
    ids = session.scalars(
        select(WebhookInbox.id)
        .where(
            WebhookInbox.status == InboxStatus.PENDING,
            WebhookInbox.received_at < stale,
            (WebhookInbox.last_attempt_at.is_(None)) | (WebhookInbox.last_attempt_at < retrying),
        )
        .order_by(WebhookInbox.received_at)
        .limit(SWEEP_BATCH)
    ).all()
    for inbox_id in ids:
        send_after_commit(session, process_webhook.s(inbox_id=inbox_id))
    return {"requeued": len(ids)}


REPLAYABLE = (InboxStatus.IGNORED, InboxStatus.UNMATCHED, InboxStatus.FAILED)


def requeue(session: Session, inbox_ids: list[int], *, include_processed: bool = False) -> list[int]:
    """Replay: put `ignored`, `unmatched` and `failed` rows (and, asked by id, `processed` ones)
    back to `pending` and enqueue them after the commit. Returns the ids that were put back.

    Replaying a processed row is safe (every handler is idempotent: nothing applied is applied
    again) and is how a row processed without effect, e.g. a payment logged before its Plan
    existed, gets its effect once the cause is fixed."""
    if not inbox_ids:
        return []
    statuses = [*REPLAYABLE, InboxStatus.PROCESSED] if include_processed else list(REPLAYABLE)
    ids = session.scalars(
        update(WebhookInbox)
        .where(WebhookInbox.id.in_(inbox_ids), WebhookInbox.status.in_(statuses))
        .values(status=InboxStatus.PENDING.value, last_error=None)
        .returning(WebhookInbox.id)
    ).all()
    for inbox_id in ids:
        send_after_commit(session, process_webhook.s(inbox_id=inbox_id))
    return list(ids)
