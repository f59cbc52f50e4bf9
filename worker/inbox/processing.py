"""Process one inbox row: apply the handler for its (source, type), set its final status.

All of it happens on the caller's session, in the caller's one transaction: the effect and the
status commit together or not at all, so a redelivered message changes nothing. The caller holds
the row's lock (`claim_row`) for the whole transaction, so two copies of a message never run at
once, and records the run's start (`worker.inbox.runs.start_run`, which also reads the row)
before calling `apply_row`.

Core statements only (no ORM object for the row): this is every event's path.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from models.base import constant, table_of
from models.inbox import InboxStatus, WebhookInbox
from models.locks import inbox_row_lock, try_lock_name
from models.logs import bind_event
from worker.inbox.replay import enqueue_after_commit, replaying_waiting_for_user
from worker.inbox.routing import handler_for
from worker.registry import Delivery, Outcome


def claim_row(session: Session, inbox_id: int) -> bool:
    """Take the row's lock for this transaction; False if another run holds it (busy)."""
    return try_lock_name(session, inbox_row_lock(inbox_id))


def process_row(session: Session, inbox_id: int) -> dict[str, Any]:
    """Read a row and apply it if it is pending (the caller holds its lock), without recording
    a run: for callers outside the task, which records the run and reads the row at once."""
    row = session.execute(
        select(
            WebhookInbox.status,
            WebhookInbox.source,
            WebhookInbox.external_id,
            WebhookInbox.event_type,
            WebhookInbox.payload,
            WebhookInbox.received_at,
        ).where(WebhookInbox.id == inbox_id)
    ).one_or_none()
    if row is None or row.status != InboxStatus.PENDING:
        return {"inbox_id": inbox_id, "status": row.status if row else "missing"}
    return apply_row(session, Delivery(inbox_id, *row[1:]))


def apply_row(session: Session, delivery: Delivery) -> dict[str, Any]:
    """Apply a pending row and record its outcome (the caller holds its lock)."""
    bind_event(source=delivery.source, provider_event_id=delivery.external_id, event_type=delivery.event_type)
    outcome = apply_delivery(session, delivery)
    finished = {"inbox_id": delivery.inbox_id, "final_status": outcome.status.value, "final_detail": outcome.detail}
    if outcome.unblocks_user is None:
        session.execute(_FINISH, finished)
    else:
        # The billing events that waited for this user go back to pending in the same statement.
        replayed = session.execute(_FINISH_AND_REPLAY, {**finished, "clerk_user_id": outcome.unblocks_user}).scalar()
        if replayed:
            enqueue_after_commit(session, sorted(replayed))
            detail = f"{outcome.detail or 'processed'}; replaying {len(replayed)} unmatched billing event(s)"
            session.execute(_SET_DETAIL, {"inbox_id": delivery.inbox_id, "final_detail": detail})
    return {"inbox_id": delivery.inbox_id, "status": outcome.status.value}


def apply_delivery(session: Session, delivery: Delivery) -> Outcome:
    handler = handler_for(delivery.source, delivery.event_type)
    if handler is None:
        return Outcome(InboxStatus.IGNORED, f"no handler for {delivery.source} {delivery.event_type}")
    return handler(session, delivery)


# The row's final state, written by the run's own transaction. (Its parameters are not named as
# the table's columns: SQLAlchemy would read such a key as a value to SET in the UPDATE of
# `_FINISH_AND_REPLAY`'s CTE too.) Built once on the table (Core: the
# session runs it without the ORM's bulk-update bookkeeping; no object of the row is loaded).
_INBOX = table_of(WebhookInbox)
_FINISH = (
    update(_INBOX)
    .where(_INBOX.c.id == bindparam("inbox_id"))
    .values(
        status=bindparam("final_status"),
        detail=bindparam("final_detail"),
        processed_at=func.now(),
        running_since=constant(None),
        last_error=constant(None),
    )
)
_FINISH_AND_REPLAY = replaying_waiting_for_user(_FINISH)
_SET_DETAIL = update(_INBOX).where(_INBOX.c.id == bindparam("inbox_id")).values(detail=bindparam("final_detail"))
