"""Replay: put inbox rows back to `pending` and enqueue them once the caller's transaction commits.

Every handler is idempotent (nothing applied is applied again), so replaying any row is safe.
Messages go out by task name (`webhooks.process`): this module never imports the tasks.
"""

from __future__ import annotations

from sqlalchemy import func, literal, update
from sqlalchemy.orm import Session

from models.inbox import InboxStatus, WebhookInbox
from worker.billing.waiting_events import unmatched_inbox_ids_for_user
from worker.celery_config import PROCESS_WEBHOOK_TASK
from worker.task_base import send_after_commit

REPLAYABLE = (InboxStatus.IGNORED, InboxStatus.UNMATCHED, InboxStatus.NEEDS_ATTENTION, InboxStatus.FAILED)


def requeue(session: Session, inbox_ids: list[int], *, include_processed: bool = False) -> list[int]:
    """Put `ignored`, `unmatched`, `needs_attention` and `failed` rows (and, asked by id, `processed` ones) back to
    `pending` and enqueue them after the commit. Returns the ids that were put back.

    Replaying a processed row is how a row processed without effect, e.g. a payment logged
    before its Plan existed, gets its effect once the cause is fixed."""
    if not inbox_ids:
        return []
    statuses = [*REPLAYABLE, InboxStatus.PROCESSED] if include_processed else list(REPLAYABLE)
    ids = session.scalars(
        update(WebhookInbox)
        .where(WebhookInbox.id.in_(inbox_ids), WebhookInbox.status.in_(statuses))
        # A fresh start: the cause was fixed, so earlier crashes no longer count, and the row is
        # enqueued now (the sweeper measures its pending age from here).
        .values(
            status=InboxStatus.PENDING.value,
            last_error=None,
            crashes=0,
            running_since=literal(None),
            enqueued_at=func.now(),
        )
        .returning(WebhookInbox.id)
    ).all()
    for inbox_id in ids:
        send_after_commit(session, PROCESS_WEBHOOK_TASK, inbox_id=inbox_id)
    return list(ids)


def replay_waiting_for_user(session: Session, clerk_user_id: str) -> list[int]:
    """Replay the billing events that waited `unmatched` for this user (or one of its links)."""
    return requeue(session, unmatched_inbox_ids_for_user(session, clerk_user_id))
