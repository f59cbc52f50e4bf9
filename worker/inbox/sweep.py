"""The sweeper: re-enqueue the pending rows whose message is gone, and only those.

A pending row is swept when its `enqueued_at` is older than SWEEP_PENDING_AFTER_SECONDS, no run
holds its lock, no live worker holds its message (prefetched, or waiting for its ETA), and it was
enqueued well before (QUEUE_ARRIVAL_SKEW) the oldest `webhooks.process` message still waiting in
the broker (if any).
Sweeping sets `enqueued_at` again. Why: docs/design.md ("How a delivery reaches its final state").
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from messaging.celery_config import PROCESS_WEBHOOK_TASK
from models.base import constant
from models.inbox import InboxStatus, WebhookInbox
from models.locks import inbox_row_lock_of, try_lock_clause
from models.settings import Settings
from worker.task_base import send_after_commit

SWEEP_BATCH = 1000
# A row's `enqueued_at` is its transaction's start; its message reaches the queue after the commit.
# Rows enqueued this little before the oldest waiting message may have theirs queued behind it
# (two transactions whose commits and pushes crossed): they are waiting, not lost.
QUEUE_ARRIVAL_SKEW = timedelta(seconds=2)


def sweep(
    session: Session,
    settings: Settings,
    *,
    oldest_waiting_id: int | None = None,
    held_ids: Collection[int] = frozenset(),
) -> list[int]:
    """One sweeper pass: re-enqueue (after the caller's commit) the rows whose message may be
    lost; `oldest_waiting_id` is the row of the oldest message still queued, if known, and
    `held_ids` the rows whose message a live worker holds (`worker.inbox.queue_probe`). Returns
    the re-enqueued ids."""
    ids = _sweepable_ids(session, settings, oldest_waiting_id, held_ids)
    if ids:
        session.execute(update(WebhookInbox).where(WebhookInbox.id.in_(ids)).values(enqueued_at=func.now()))
    for inbox_id in ids:
        send_after_commit(session, PROCESS_WEBHOOK_TASK, inbox_id=inbox_id)
    return ids


def _sweepable_ids(
    session: Session, settings: Settings, oldest_waiting_id: int | None, held_ids: Collection[int]
) -> list[int]:
    return list(session.scalars(sweepable_query(settings, oldest_waiting_id, held_ids)))


def sweepable_query(
    settings: Settings, oldest_waiting_id: int | None, held_ids: Collection[int] = frozenset()
) -> Select[int]:
    """The rows a pass re-enqueues, locked. The status is written into the SQL (`constant`), so
    the plan PostgreSQL caches for this statement can use the partial index on pending rows."""
    stale = WebhookInbox.enqueued_at < func.now() - timedelta(seconds=settings.sweep_pending_after_seconds)
    conditions = [WebhookInbox.status == constant(InboxStatus.PENDING.value), stale]
    if oldest_waiting_id is not None:
        waiting_since = select(WebhookInbox.enqueued_at).where(WebhookInbox.id == oldest_waiting_id).scalar_subquery()
        conditions.append(WebhookInbox.enqueued_at < func.coalesce(waiting_since, func.now()) - QUEUE_ARRIVAL_SKEW)
    if held_ids:
        # A prefetched message is on its way: sweeping its row would only queue a duplicate.
        conditions.append(WebhookInbox.id.not_in(sorted(held_ids)))
    candidates = (select(WebhookInbox.id).where(*conditions).order_by(WebhookInbox.enqueued_at).limit(SWEEP_BATCH)).cte(
        "candidates"
    )
    # The lock a run holds for its whole transaction, tried without waiting: taken here, it also
    # keeps a run from starting on the row until this sweep commits (that run retries shortly).
    unlocked = try_lock_clause(inbox_row_lock_of(candidates.c.id))
    return select(candidates.c.id).where(unlocked)
