"""Process one inbox row: lock it, apply the handler for its (source, type), set its final status.

All of it happens on the caller's session, in the caller's one transaction: the effect and the
status commit together or not at all, so a redelivered message changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.inbox import InboxStatus, WebhookInbox
from worker.inbox.replay import replay_waiting_for_user
from worker.inbox.routing import handler_for
from worker.registry import Delivery, Outcome


def process_row(session: Session, inbox_id: int) -> dict[str, Any]:
    """Lock the row (SKIP LOCKED: a second copy of the message finds it busy and leaves), return
    if it is no longer pending, apply it and record the outcome."""
    row = session.execute(
        select(WebhookInbox).where(WebhookInbox.id == inbox_id).with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if row is None:
        return {"inbox_id": inbox_id, "status": "busy_or_missing"}
    if row.status != InboxStatus.PENDING:
        return {"inbox_id": inbox_id, "status": row.status}
    outcome = apply_delivery(session, row)
    detail = outcome.detail
    if outcome.unblocks_user is not None:
        # Before this row's own status is written, so the replay never picks this row itself.
        replayed = replay_waiting_for_user(session, outcome.unblocks_user)
        if replayed:
            detail = f"{detail or 'processed'}; replaying {len(replayed)} unmatched billing event(s)"
    row.status = outcome.status
    row.detail = detail
    row.attempts += 1
    row.last_attempt_at = row.processed_at = func.now()
    row.last_error = None
    return {"inbox_id": inbox_id, "status": outcome.status.value}


def apply_delivery(session: Session, row: WebhookInbox) -> Outcome:
    handler = handler_for(row.source, row.event_type)
    if handler is None:
        return Outcome(InboxStatus.IGNORED, f"no handler for {row.source} {row.event_type}")
    delivery = Delivery(row.id, row.source, row.external_id, row.event_type, row.payload, row.received_at)
    return handler(session, delivery)
