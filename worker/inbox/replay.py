"""Replay: put inbox rows back to `pending` and enqueue them once the caller's transaction commits.

Every handler is idempotent (nothing applied is applied again), so replaying any row is safe.
Messages go out by task name (`webhooks.process`): this module never imports the tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Text, Update, bindparam, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningUpdate

from messaging.celery_config import PROCESS_WEBHOOK_TASK
from models.base import constant, table_of
from models.inbox import InboxStatus, WebhookInbox
from worker.billing.waiting_events import unmatched_for_user
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
        .values(_PUT_BACK)
        .returning(WebhookInbox.id)
    ).all()
    enqueue_after_commit(session, ids)
    return list(ids)


def enqueue_after_commit(session: Session, inbox_ids: Iterable[int]) -> None:
    """Send `webhooks.process` for rows put back to pending, once the transaction commits."""
    for inbox_id in inbox_ids:
        send_after_commit(session, PROCESS_WEBHOOK_TASK, inbox_id=inbox_id)


# A fresh start: the cause was fixed, so earlier crashes no longer count, and the row is enqueued
# now (the sweeper measures its pending age from here).
_PUT_BACK: dict[str, Any] = {
    "status": constant(InboxStatus.PENDING.value),
    "last_error": constant(None),
    "crashes": constant(0),
    "running_since": constant(None),
    "enqueued_at": func.now(),
}


def replaying_waiting_for_user(finish: Update) -> ReturningUpdate[Any]:
    """`finish` (the UPDATE that ends an inbox row's run) that also replays the billing events
    that waited `unmatched` for the user `:clerk_user_id` (or one of its Asaas links), as
    `requeue` does, in the same round trip:

        WITH replayed AS (UPDATE webhook_inbox SET status = 'pending', ... WHERE id IN
                          (<unmatched rows naming the user>) RETURNING id)
        UPDATE webhook_inbox SET ... WHERE id = :inbox_id RETURNING (SELECT array_agg(id) FROM replayed)

    One row back, holding the replayed ids (NULL: none); the caller enqueues them after the
    commit (`enqueue_after_commit`). The finished row is pending, never unmatched, so the two
    UPDATEs never touch the same row."""
    inbox = table_of(WebhookInbox)
    waiting = unmatched_for_user(bindparam("clerk_user_id", type_=Text))
    replayed = (
        update(inbox)
        # The status again on the row itself: a row changed by a transaction this one waited
        # for (processed meanwhile, or replayed by an operator) is checked anew, whereas the
        # subquery's answer dates from before the wait.
        .where(inbox.c.id.in_(waiting.scalar_subquery()), inbox.c.status == constant(InboxStatus.UNMATCHED.value))
        .values({inbox.c[name]: value for name, value in _PUT_BACK.items()})
        .returning(inbox.c.id)
        .cte("replayed")
    )
    return finish.returning(select(func.array_agg(replayed.c.id)).scalar_subquery())
