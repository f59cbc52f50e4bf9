"""Deliveries `pedro-webhooks send` made (their body carries `SENT_BY_FIELD`) and the ledger
entries they account for, so `reconcile` and `user show` never take a test delivery's credits
for a provider's. A delivery accounts for the entries `inbox show` lists as its effects: the
signup of the user it created, the grant and reversals of the payment it names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from models.inbox import WebhookInbox
from models.ledger import CreditLedgerEntry
from ops.queries.inbox_rows import effects_of, id_for_rows_naming_a_user, rows_naming_user
from ops.sample_deliveries import SENT_BY_FIELD


@dataclass(frozen=True)
class SentDelivery:
    inbox_id: int
    source: str
    event_type: str
    external_id: str
    received_at: datetime
    ledger_entries: list[CreditLedgerEntry]

    @property
    def credits(self) -> int:
        return sum(entry.delta for entry in self.ledger_entries)

    def as_json(self) -> dict[str, object]:
        return {
            "inbox_id": self.inbox_id,
            "source": self.source,
            "event_type": self.event_type,
            "external_id": self.external_id,
            "ledger_entry_ids": [entry.id for entry in self.ledger_entries],
        }


def sent_by_send() -> ColumnElement[bool]:
    return WebhookInbox.payload.has_key(SENT_BY_FIELD)


def sent_deliveries(session: Session, clerk_user_id: str | None = None) -> list[SentDelivery]:
    """Every marked delivery (those naming the user, when given), oldest first, with its entries
    (only the user's, when given)."""
    conditions = [sent_by_send()] if clerk_user_id is None else [sent_by_send(), rows_naming_user(clerk_user_id)]
    order = WebhookInbox.id if clerk_user_id is None else id_for_rows_naming_a_user()
    rows = session.scalars(select(WebhookInbox).where(*conditions).order_by(order))
    return [_with_entries(session, row, clerk_user_id) for row in rows]


def _with_entries(session: Session, row: WebhookInbox, clerk_user_id: str | None) -> SentDelivery:
    entries = [
        entry
        for entry in effects_of(session, row).ledger_entries
        if clerk_user_id is None or entry.clerk_user_id == clerk_user_id
    ]
    return SentDelivery(row.id, row.source, row.event_type, row.external_id, row.received_at, entries)
