"""The inbox as an operator reads it: counts, filtered lists, one row with what it changed, and
retention.

Statuses are handled generically (every `InboxStatus`), so a status added later is counted,
listed and aged without changes here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, cast, delete, exists, func, literal, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from models.app import SubscriptionEvent
from models.base import table_of
from models.billing import PaymentCredit, ProviderLink
from models.inbox import InboxStatus, Source, WebhookInbox, payload_names
from models.ledger import CreditLedgerEntry
from worker.billing.subscription_log import subscription_event_id
from worker.billing.waiting_events import names_user
from worker.registry import Delivery

# Final rows retention may delete: their effect is committed (or there is none to have). Rows
# still to be replayed or looked at (`unmatched`, `needs_attention`, `failed`) and `pending`
# ones are kept whatever their age. Reconcile reads balances, the ledger and payment state,
# never the inbox.
PRUNABLE_STATUSES = (InboxStatus.PROCESSED, InboxStatus.IGNORED)
# Providers re-send for days (Asaas keeps events 14 days): a pruned event sent again would be
# stored and processed again. That is harmless (processing is idempotent) but noisy.
MIN_RETENTION = timedelta(days=14)


@dataclass(frozen=True)
class StatusCount:
    source: str
    status: str
    count: int
    oldest_received_at: datetime | None


def counts_by_status(session: Session) -> list[StatusCount]:
    """Rows per (source, status), with the oldest row's arrival, in one pass over the table."""
    rows = session.execute(
        select(WebhookInbox.source, WebhookInbox.status, func.count(), func.min(WebhookInbox.received_at))
        .group_by(WebhookInbox.source, WebhookInbox.status)
        .order_by(WebhookInbox.source, WebhookInbox.status)
    ).all()
    return [StatusCount(source, status, count, oldest) for source, status, count, oldest in rows]


@dataclass(frozen=True)
class InboxQuery:
    statuses: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    clerk_user_id: str | None = None
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    external_id: str | None = None  # the provider's event id
    limit: int = 50
    # Keyset paging, newest first: rows older than `before_id`, or (a page back) newer than `after_id`.
    before_id: int | None = None
    after_id: int | None = None


@dataclass(frozen=True)
class InboxPage:
    rows: list[WebhookInbox]  # newest first
    older: int | None  # `before_id` of the next page (None: this is the last)
    newer: int | None  # `after_id` of the page before (None: this is the first)


def list_rows(session: Session, query: InboxQuery) -> list[WebhookInbox]:
    """Newest first."""
    return inbox_page(session, query).rows


def inbox_page(session: Session, query: InboxQuery) -> InboxPage:
    """One page of the matching rows, newest first, and the cursors to the pages beside it.

    Keyset paging on the id (never OFFSET): a page costs the same however deep it is, and rows
    arriving meanwhile never shift a row onto two pages."""
    conditions = conditions_of(query)
    key = _order_key(query)
    backwards = query.after_id is not None and query.before_id is None
    if backwards:
        statement = select(WebhookInbox).where(*conditions, key > query.after_id)
        found = list(session.scalars(statement.order_by(key).limit(query.limit + 1)))
        more_newer = len(found) > query.limit
        rows = list(reversed(found[: query.limit]))
        more_older = bool(rows) and _any_beyond(session, conditions, key < rows[-1].id)
    else:
        statement = select(WebhookInbox).where(*conditions)
        if query.before_id is not None:
            statement = statement.where(key < query.before_id)
        found = list(session.scalars(statement.order_by(key.desc()).limit(query.limit + 1)))
        more_older = len(found) > query.limit
        rows = found[: query.limit]
        more_newer = query.before_id is not None and bool(rows)
        more_newer = more_newer and _any_beyond(session, conditions, key > rows[0].id)
    return InboxPage(
        rows,
        older=rows[-1].id if rows and more_older else None,
        newer=rows[0].id if rows and more_newer else None,
    )


def _order_key(query: InboxQuery) -> ColumnElement[int]:
    inbox_id: ColumnElement[int] = table_of(WebhookInbox).c.id
    return id_for_rows_naming_a_user() if query.clerk_user_id else inbox_id


def id_for_rows_naming_a_user() -> ColumnElement[int]:
    """The id to order and page rows that `rows_naming_user` selects by: as an expression no
    index holds (`id + 0`). PostgreSQL cannot tell from `payload_names() && <the user's ids>` how
    few rows match (the ids come from a subquery), so it would walk the whole primary key (or a
    status index) in id order looking for them: seconds over a million rows. Ordered by `id + 0`,
    it takes them from the GIN index and sorts them: milliseconds."""
    return table_of(WebhookInbox).c.id + 0


def _any_beyond(session: Session, conditions: list[ColumnElement[bool]], beyond: ColumnElement[bool]) -> bool:
    return session.scalar(select(exists().where(*conditions, beyond))) or False


def conditions_of(query: InboxQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.statuses:
        conditions.append(WebhookInbox.status.in_(query.statuses))
    if query.sources:
        conditions.append(WebhookInbox.source.in_(query.sources))
    if query.event_types:
        conditions.append(WebhookInbox.event_type.in_(query.event_types))
    if query.since is not None:
        conditions.append(WebhookInbox.received_at >= query.since)
    if query.until is not None:
        conditions.append(WebhookInbox.received_at < query.until)
    if query.external_id is not None:
        conditions.append(WebhookInbox.external_id == query.external_id)
        if not query.sources:
            # Every source, said out loud: the unique index (source, external_id) then serves an
            # event id of either provider (one probe per source) without an index of its own.
            conditions.append(WebhookInbox.source.in_([source.value for source in Source]))
    if query.clerk_user_id:
        conditions.append(rows_naming_user(query.clerk_user_id))
    return conditions


def rows_naming_user(clerk_user_id: str) -> ColumnElement[bool]:
    """Clerk's user events (`data.id`) and every billing event that names the user.

    The exact test is the billing rules'; `payload_names()` first narrows the inbox to the rows
    whose payload holds the user's id or one of its Asaas links (its GIN index, migration 0010)."""
    user_event = and_(
        WebhookInbox.source == "clerk",
        WebhookInbox.event_type.startswith("user."),
        WebhookInbox.payload[("data", "id")].astext == clerk_user_id,
    )
    return and_(candidates_naming(clerk_user_id), or_(user_event, names_user(clerk_user_id)))


def candidates_naming(clerk_user_id: str) -> ColumnElement[bool]:
    """Rows whose payload holds the user's id or an Asaas customer/subscription linked to it."""
    linked = select(ProviderLink.external_id).where(
        ProviderLink.provider == "asaas", ProviderLink.clerk_user_id == clerk_user_id
    )
    # text[] spelled out: the driver binds a str as varchar, and text[] && varchar[] has no operator.
    own_id = cast(postgresql.array([literal(clerk_user_id)]), postgresql.ARRAY(Text))
    names = own_id.op("||")(func.array(linked.scalar_subquery()))
    return payload_names().op("&&")(names)


def ids_with_status(session: Session, statuses: tuple[str, ...], since: datetime | None = None) -> list[int]:
    statement = select(WebhookInbox.id).where(WebhookInbox.status.in_(statuses)).order_by(WebhookInbox.id)
    if since is not None:
        statement = statement.where(WebhookInbox.received_at >= since)
    return list(session.scalars(statement))


@dataclass(frozen=True)
class RowEffects:
    """What a row changed: the SubscriptionEvent it logged, the ledger entries of the payment it
    names (or of the user it created), and that payment's grant/reversal state."""

    subscription_events: list[SubscriptionEvent] = field(default_factory=list)
    ledger_entries: list[CreditLedgerEntry] = field(default_factory=list)
    payments: list[PaymentCredit] = field(default_factory=list)


def get_row(session: Session, inbox_id: int) -> WebhookInbox | None:
    return session.get(WebhookInbox, inbox_id)


def effects_of(session: Session, row: WebhookInbox) -> RowEffects:
    delivery = Delivery(row.id, row.source, row.external_id, row.event_type, row.payload, row.received_at)
    events = list(
        session.scalars(select(SubscriptionEvent).where(SubscriptionEvent.id == subscription_event_id(delivery)))
    )
    payments = [(row.source, payment_id) for payment_id in payment_ids(row)]
    entry_matches: list[ColumnElement[bool]] = [
        # The signup grant names the Clerk message that created the user.
        CreditLedgerEntry.reference == f"{row.source} {row.external_id}",
    ]
    for provider, payment_id in payments:
        entry_matches.append(CreditLedgerEntry.idempotency_key == f"grant:{provider}:{payment_id}")
        entry_matches.append(func.starts_with(CreditLedgerEntry.idempotency_key, f"reversal:{provider}:{payment_id}:"))
    entries = list(session.scalars(select(CreditLedgerEntry).where(or_(*entry_matches)).order_by(CreditLedgerEntry.id)))
    states = [
        state
        for provider, payment_id in payments
        if (state := session.get(PaymentCredit, (provider, payment_id))) is not None
    ]
    return RowEffects(events, entries, states)


def payment_ids(row: WebhookInbox) -> list[str]:
    """The payment whose credits this event may move, as the billing handlers key it: the Asaas
    payment id, the Clerk payment attempt, or a Clerk free plan's item and period."""
    payload: dict[str, Any] = row.payload
    if row.source == "asaas":
        payment = payload.get("payment")
        payment_id = payment.get("id") if isinstance(payment, dict) else None
        return [payment_id] if isinstance(payment_id, str) and payment_id else []
    data = payload.get("data")
    if not isinstance(data, dict):
        return []
    if row.event_type.startswith("paymentAttempt.") and isinstance(data.get("id"), str):
        return [data["id"]]
    if row.event_type.startswith("subscriptionItem."):
        return [f"free:{data.get('id')}:{data.get('period_start')}"]
    return []


def prune_batch(session: Session, older_than: timedelta, batch_size: int) -> int:
    """Delete up to `batch_size` final rows that ended before `now - older_than`. Rows another
    transaction holds (a replay in progress) are skipped. Returns how many were deleted."""
    if older_than < MIN_RETENTION:
        raise ValueError(f"retention below {MIN_RETENTION.days} days")
    ended = func.coalesce(WebhookInbox.processed_at, WebhookInbox.received_at)
    doomed = (
        select(WebhookInbox.id)
        .where(
            WebhookInbox.status.in_([status.value for status in PRUNABLE_STATUSES]),
            ended < func.now() - older_than,
        )
        .order_by(WebhookInbox.id)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    deleted = session.execute(delete(WebhookInbox).where(WebhookInbox.id.in_(doomed)).returning(WebhookInbox.id))
    return len(deleted.all())


def count_prunable(session: Session, older_than: timedelta) -> int:
    ended = func.coalesce(WebhookInbox.processed_at, WebhookInbox.received_at)
    return (
        session.scalar(
            select(func.count()).where(
                WebhookInbox.status.in_([status.value for status in PRUNABLE_STATUSES]),
                ended < func.now() - older_than,
            )
        )
        or 0
    )
