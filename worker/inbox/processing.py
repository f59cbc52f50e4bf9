"""Process one inbox row: apply the handler for its (source, type), set its final status.

All of it happens on the caller's session, in the caller's one transaction: the effect and the
status commit together or not at all, so a redelivered message changes nothing. The caller holds
the row's lock (`claim_row`) for the whole transaction, so two copies of a message never run at
once, and records the run's start (`worker.inbox.runs`) before calling `process_row`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.inbox import InboxStatus, WebhookInbox
from models.locks import inbox_row_lock, try_lock_name
from models.logs import bind_event
from worker.inbox.replay import replay_waiting_for_user
from worker.inbox.routing import handler_for
from worker.registry import Delivery, Outcome


def claim_row(session: Session, inbox_id: int) -> bool:
    """Take the row's lock for this transaction; False if another run holds it (busy)."""
    return try_lock_name(session, inbox_row_lock(inbox_id))


def process_row(session: Session, inbox_id: int) -> dict[str, Any]:
    """Apply a pending row and record its outcome (the caller holds its lock)."""
    row = session.execute(
        select(WebhookInbox).where(WebhookInbox.id == inbox_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if row is not None:
        bind_event(source=row.source, provider_event_id=row.external_id, event_type=row.event_type)
    if row is None or row.status != InboxStatus.PENDING:
        return {"inbox_id": inbox_id, "status": row.status if row else "missing"}
    outcome = apply_delivery(session, row)
    detail = outcome.detail
    if outcome.unblocks_user is not None:
        # Before this row's own status is written, so the replay never picks this row itself.
        replayed = replay_waiting_for_user(session, outcome.unblocks_user)
        if replayed:
            detail = f"{detail or 'processed'}; replaying {len(replayed)} unmatched billing event(s)"
    row.status = outcome.status
    row.detail = detail
    row.processed_at = func.now()
    row.running_since = None
    row.last_error = None
    return {"inbox_id": inbox_id, "status": outcome.status.value}


def apply_delivery(session: Session, row: WebhookInbox) -> Outcome:
    handler = handler_for(row.source, row.event_type)
    if handler is None:
        return Outcome(InboxStatus.IGNORED, f"no handler for {row.source} {row.event_type}")
    delivery = Delivery(row.id, row.source, row.external_id, row.event_type, row.payload, row.received_at)
    return handler(session, delivery)
