"""Plans, users and provider events for the billing tests, and the invariants every one checks
(tests/billing/conftest.py runs them after every billing test)."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import Text, bindparam, select, text
from sqlalchemy.orm import Session, sessionmaker

from models.app import CreditBalance, Plan, SubscriptionEvent
from models.inbox import WebhookInbox
from models.ledger import CreditLedgerEntry
from tests.support.inbox import assert_ledger_matches_balances, clerk_user_event, deliver, payload
from worker.billing.subscription_log import subscription_event_id
from worker.billing.waiting_events import unmatched_for_user
from worker.registry import Delivery

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"  # the payer / externalReference of the fixtures
SIGNUP = 100
PRO_CREDITS = 500  # the `pro` plan's credits (tests/billing/conftest.py)


def add_plan(factory: sessionmaker[Session], **fields: Any) -> str:
    """A `Plan` row, as the app's admin would create it; returns its id."""
    with factory.begin() as session:
        plan = Plan(**{"name": fields.get("id", "plan"), **fields})
        session.add(plan)
        session.flush()
        return plan.id


def add_pro_plan(factory: sessionmaker[Session]) -> str:
    """The plan the payload fixtures name: Asaas `pro` (externalReference `<user>|pro`, the
    subscription's plan key) and Clerk `cplan_2xPro` (the plan of the paid attempts)."""
    return add_plan(factory, id="pro", name="Pro", credits=PRO_CREDITS, asaas_id="pro", clerk_id="cplan_2xPro")


def add_user(factory: sessionmaker[Session], clerk_id: str = CLERK_ID) -> int:
    """The user as Clerk creates it: `user.created` through the pipeline (100 signup credits).
    Returns its inbox row's id."""
    row = deliver(factory, "clerk", clerk_user_event("user.created", clerk_id, 1, email_addresses=[]))
    assert row.status == "processed", row.detail
    return row.id


def asaas_event(name: str, **payment: Any) -> dict[str, Any]:
    """A documented Asaas delivery with payment fields replaced; `event_id=` replaces its id."""
    body = copy.deepcopy(payload(f"asaas/{name}"))
    if "event_id" in payment:
        body["id"] = payment.pop("event_id")
    body[_object_key(body)].update(payment)
    return body


def clerk_event(name: str, *, data: dict[str, Any] | None = None, **envelope: Any) -> dict[str, Any]:
    body = copy.deepcopy(payload(f"clerk/{name}"))
    body["data"].update(data or {})
    body.update(envelope)
    return body


def balance(factory: sessionmaker[Session], clerk_id: str = CLERK_ID) -> int | None:
    with factory() as session:
        return session.scalar(select(CreditBalance.credits_remaining).where(CreditBalance.clerk_user_id == clerk_id))


def ledger(factory: sessionmaker[Session]) -> list[tuple[str, int, str | None]]:
    """(kind, delta, reference) of every entry but the signups, in order."""
    with factory() as session:
        rows = session.execute(
            select(CreditLedgerEntry.kind, CreditLedgerEntry.delta, CreditLedgerEntry.reference)
            .where(CreditLedgerEntry.kind != "signup")
            .order_by(CreditLedgerEntry.id)
        ).all()
    return [tuple(row) for row in rows]


def subscription_events(factory: sessionmaker[Session]) -> list[SubscriptionEvent]:
    with factory() as session:
        return list(
            session.scalars(
                select(SubscriptionEvent).order_by(SubscriptionEvent.occurred_at, SubscriptionEvent.event_type)
            )
        )


def assert_billing_invariants(factory: sessionmaker[Session]) -> None:
    """Per user creditsRemaining == sum(ledger); each SubscriptionEvent belongs to exactly one
    delivered event, and every processed billing event has its row."""
    assert_ledger_matches_balances(factory)
    with factory() as session:
        rows = session.scalars(select(WebhookInbox)).all()
        logged = set(session.scalars(select(SubscriptionEvent.id)))
    ids = {subscription_event_id(_delivery(row)): row for row in rows}
    assert logged <= ids.keys(), "a SubscriptionEvent that no delivered event explains"
    processed_billing = {key for key, row in ids.items() if row.status == "processed" and _is_billing(row)}
    assert processed_billing <= logged, "a processed billing event without its SubscriptionEvent"


def waiting_for_user(factory: sessionmaker[Session], clerk_id: str = CLERK_ID) -> list[int]:
    """The unmatched rows naming this user (the lookup the pipeline's replay runs)."""
    lookup = unmatched_for_user(bindparam("clerk_user_id", type_=Text))
    with factory() as session:
        return list(session.scalars(lookup, {"clerk_user_id": clerk_id}))


def count(factory: sessionmaker[Session], table: str) -> int:
    with factory() as session:
        return session.scalar(text(f"SELECT count(*) FROM {table}"))


def _delivery(row: WebhookInbox) -> Delivery:
    return Delivery(row.id, row.source, row.external_id, row.event_type, row.payload)


def _is_billing(row: WebhookInbox) -> bool:
    return not row.event_type.startswith(("user.", "organization.", "session.", "email."))


def _object_key(body: dict[str, Any]) -> str:
    return next(key for key in ("payment", "subscription", "checkout") if key in body)
