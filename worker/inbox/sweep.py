"""Which pending inbox rows the sweeper re-enqueues: those whose message may be lost."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.inbox import InboxStatus, WebhookInbox
from models.settings import Settings
from worker.celery_config import MAX_RETRY_COUNTDOWN, PROCESS_WEBHOOK_TASK
from worker.task_base import send_after_commit

SWEEP_BATCH = 1000


def stale_pending_ids(session: Session, settings: Settings) -> list[int]:
    """Rows `pending` for longer than SWEEP_PENDING_AFTER_SECONDS. A row that is retrying is left
    to its retry chain for up to the longest countdown."""
    stale = func.now() - timedelta(seconds=settings.sweep_pending_after_seconds)
    retrying = func.now() - timedelta(seconds=settings.sweep_pending_after_seconds + MAX_RETRY_COUNTDOWN)
    return list(
        session.scalars(
            select(WebhookInbox.id)
            .where(
                WebhookInbox.status == InboxStatus.PENDING,
                WebhookInbox.received_at < stale,
                (WebhookInbox.last_attempt_at.is_(None)) | (WebhookInbox.last_attempt_at < retrying),
            )
            .order_by(WebhookInbox.received_at)
            .limit(SWEEP_BATCH)
        )
    )


def sweep(session: Session, settings: Settings) -> list[int]:
    """One sweeper pass: re-enqueue (after the caller's commit) the rows whose message may be lost.
    Returns their ids. Re-enqueueing is harmless: processing is idempotent."""
    ids = stale_pending_ids(session, settings)
    for inbox_id in ids:
        send_after_commit(session, PROCESS_WEBHOOK_TASK, inbox_id=inbox_id)
    return ids
