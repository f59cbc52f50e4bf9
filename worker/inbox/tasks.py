"""The pipeline's Celery tasks: process one inbox row, store a delivery the receiver could not,
sweep. Each is one transaction (`TransactionalTask`) and only delegates."""

from __future__ import annotations

import logging
from typing import Any, ParamSpec, TypedDict, TypeVar

from billiard.einfo import ExceptionInfo
from sqlalchemy import func, update

from models.inbox import InboxStatus, WebhookInbox, record_delivery
from models.settings import process_settings
from worker import database
from worker.celery_app import app
from worker.celery_config import (
    INGEST_WEBHOOK_TASK,
    MAX_RETRY_COUNTDOWN,
    PROCESS_WEBHOOK_TASK,
    SWEEP_INBOX_TASK,
)
from worker.errors import TRANSIENT_ERRORS, describe
from worker.inbox.processing import process_row
from worker.inbox.sweep import sweep
from worker.task_base import TransactionalTask, send_after_commit

_P = ParamSpec("_P")
_R = TypeVar("_R", covariant=True)

log = logging.getLogger(__name__)

PROCESS_MAX_RETRIES = 8


class InboxTask(TransactionalTask[_P, _R]):
    """Records each failed try on the inbox row, in a transaction of its own (the task's own
    transaction was rolled back): `attempts` and `last_error` on a retry, and `failed` (the
    dead letter) when retries are exhausted or the error is not transient."""

    abstract = True

    def on_retry(
        self, exc: Exception, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: ExceptionInfo
    ) -> None:
        _record_failed_try(kwargs["inbox_id"], exc, final=False)

    def on_failure(
        self, exc: Exception, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: ExceptionInfo
    ) -> None:
        _record_failed_try(kwargs["inbox_id"], exc, final=True)


class RetryOptions(TypedDict):
    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: int
    retry_backoff_max: int
    retry_jitter: bool


# Transient errors retry with exponential backoff (2, 4, 8 ... s), capped, with jitter.
RETRY_TRANSIENT_ERRORS: RetryOptions = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": MAX_RETRY_COUNTDOWN,
    "retry_jitter": True,
}


@app.task(
    name=PROCESS_WEBHOOK_TASK, base=InboxTask, bind=True, max_retries=PROCESS_MAX_RETRIES, **RETRY_TRANSIENT_ERRORS
)
def process_webhook(task: InboxTask[..., dict[str, Any]], inbox_id: int) -> dict[str, Any]:
    return process_row(task.session, inbox_id)


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
@app.task(name=INGEST_WEBHOOK_TASK, base=TransactionalTask, bind=True, max_retries=None, **RETRY_TRANSIENT_ERRORS)
def ingest_webhook(
    task: TransactionalTask[..., dict[str, Any]],
    source: str,
    external_id: str,
    event_type: str,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """Store a verified delivery the receiver could not store (PostgreSQL was down), then
    process it like any other."""
    session = task.session
    inbox_id = record_delivery(session, source=source, external_id=external_id, event_type=event_type, payload=payload)
    if inbox_id is None:
        return {"status": "duplicate"}
    send_after_commit(session, PROCESS_WEBHOOK_TASK, inbox_id=inbox_id)
    return {"status": "accepted", "inbox_id": inbox_id}


@app.task(name=SWEEP_INBOX_TASK, base=TransactionalTask, bind=True)
def sweep_inbox(task: TransactionalTask[..., dict[str, int]]) -> dict[str, int]:
    """Re-enqueue rows left `pending` (Redis lost the message, a worker died before its ack)."""
    return {"requeued": len(sweep(task.session, process_settings()))}
