"""Put deliveries in the inbox and run the pipeline on them, as the receiver and worker would."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from models.inbox import WebhookInbox, record_delivery
from models.ledger import CreditLedgerEntry

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"


def payload(name: str) -> dict[str, Any]:
    """A documented example delivery, e.g. payload("clerk/user.created")."""
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def clerk_user_event(event_type: str, clerk_id: str, updated_at: int, **fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(payload(f"clerk/{event_type}"))
    body["data"].update(id=clerk_id, updated_at=updated_at, **fields)
    return body


def store(factory: sessionmaker[Session], source: str, body: dict[str, Any], external_id: str | None = None) -> int:
    """What the receiver does: one inbox row per provider event id."""
    event_type = body.get("type") if source == "clerk" else body.get("event")
    external_id = external_id or (body.get("id") if source == "asaas" else f"msg_{uuid.uuid4().hex}")
    with factory.begin() as session:
        inbox_id = record_delivery(session, source=source, external_id=external_id, event_type=event_type, payload=body)
    assert inbox_id is not None, "duplicate delivery"
    return inbox_id


def process(inbox_id: int, **options: Any) -> dict[str, Any]:
    """Run `webhooks.process` in this process (Celery's eager path: same task code, same DB)."""
    from worker.inbox.tasks import process_webhook

    result = process_webhook.apply(kwargs={"inbox_id": inbox_id}, **options)
    return result.get(propagate=False)


def deliver(
    factory: sessionmaker[Session], source: str, body: dict[str, Any], external_id: str | None = None
) -> WebhookInbox:
    inbox_id = store(factory, source, body, external_id)
    process(inbox_id)
    return inbox_row(factory, inbox_id)


def inbox_row(factory: sessionmaker[Session], inbox_id: int) -> WebhookInbox:
    with factory() as session:
        return session.execute(select(WebhookInbox).where(WebhookInbox.id == inbox_id)).scalar_one()


def ledger_sum(session: Session, user_id: str) -> int:
    """What the ledger says the user's balance is (the invariant's right-hand side)."""
    total = select(func.coalesce(func.sum(CreditLedgerEntry.delta), 0)).where(CreditLedgerEntry.user_id == user_id)
    return session.execute(total).scalar_one()


def assert_ledger_matches_balances(factory: sessionmaker[Session]) -> None:
    """The invariant: per balance, creditsRemaining == sum of its ledger deltas."""
    with factory() as session:
        mismatched = session.execute(
            text(
                'SELECT b."clerkUserId", b."creditsRemaining", coalesce(sum(l.delta), 0) AS ledger '
                'FROM "CreditBalance" b LEFT JOIN ingest.credit_ledger l ON l.credit_balance_id = b.id '
                'GROUP BY b.id HAVING b."creditsRemaining" <> coalesce(sum(l.delta), 0)'
            )
        ).all()
    assert mismatched == [], mismatched
