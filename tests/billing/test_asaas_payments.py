"""Asaas payment events through the inbox pipeline: one grant per payment, reversals that never
exceed it, in any order and however often they are delivered."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from sqlalchemy import text

from models.inbox import record_delivery
from tests.support.billing import (
    CLERK_ID,
    PRO_CREDITS,
    SIGNUP,
    add_plan,
    add_user,
    asaas_event,
    balance,
    count,
    ledger,
    subscription_events,
)
from tests.support.inbox import deliver, inbox_row, process, store
from worker.plans.current_plan import current_plan

GRANT = ("grant", PRO_CREDITS, "asaas payment pay_080225913252 (Pro)")
REVERSAL_REFERENCE = "refund/chargeback of asaas payment pay_080225913252"


def _deliver_asaas(session_factory, body):
    return deliver(session_factory, "asaas", body)


def _orderings() -> list[tuple[str, ...]]:
    """Every distinct order of CREATED, CONFIRMED and RECEIVED, each delivered twice (90)."""
    return sorted(set(itertools.permutations(["PAYMENT_CREATED", "PAYMENT_CONFIRMED", "PAYMENT_RECEIVED"] * 2)))


def test_created_confirmed_received_each_twice_in_any_order_grant_once(session_factory, pro):
    orderings = _orderings()
    for number, names in enumerate(orderings):
        payment_id = f"pay_order_{number}"
        inbox_ids: dict[str, int] = {}
        for name in names:
            body = asaas_event(name, event_id=f"evt_{number}&{name}", id=payment_id)
            with session_factory.begin() as session:
                # The second delivery of an event id is a duplicate in the inbox (None); its
                # message may still be processed again.
                new_id = record_delivery(session, source="asaas", external_id=body["id"], event_type=name, payload=body)
            inbox_ids.setdefault(name, new_id)
            assert process(inbox_ids[name])["status"] == "processed"
    grants = [reference for kind, _, reference in ledger(session_factory) if kind == "grant"]
    assert sorted(grants) == sorted(f"asaas payment pay_order_{n} (Pro)" for n in range(len(orderings)))
    assert balance(session_factory) == SIGNUP + len(orderings) * PRO_CREDITS
    assert count(session_factory, '"SubscriptionEvent"') == 3 * len(orderings)


def test_concurrent_events_of_many_payments_on_a_real_worker(celery_worker, producer, session_factory, pro):
    """CONFIRMED, RECEIVED and REFUNDED of each payment processed at once by two worker
    processes: the payment's row lock makes one grant and one reversal of each."""
    payments = [f"pay_concurrent_{n}" for n in range(10)]
    inbox_ids = [
        store(session_factory, "asaas", asaas_event(name, event_id=f"evt_{payment}&{name}", id=payment))
        for payment in payments
        for name in ("PAYMENT_CONFIRMED", "PAYMENT_RECEIVED", "PAYMENT_REFUNDED")
    ]
    results = [producer.send_task("webhooks.process", kwargs={"inbox_id": i}) for i in inbox_ids]
    assert {r.get(timeout=60)["status"] for r in results} == {"processed"}
    kinds = [kind for kind, _, _ in ledger(session_factory)]
    assert (kinds.count("grant"), kinds.count("reversal")) == (len(payments), len(payments))
    assert balance(session_factory) == SIGNUP


def test_created_never_grants_and_says_so(session_factory, pro):
    row = _deliver_asaas(session_factory, asaas_event("PAYMENT_CREATED"))
    assert (row.status, row.detail) == ("processed", "logged; PAYMENT_CREATED moves no credits")
    assert ledger(session_factory) == []


def test_subscription_event_row_has_the_event_in_utc(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED"))
    [event] = subscription_events(session_factory)
    assert (event.clerk_user_id, event.plan_key, event.status, event.event_type) == (
        CLERK_ID,
        "pro",
        "CONFIRMED",
        "PAYMENT_CONFIRMED",
    )
    assert event.occurred_at == datetime(2024, 6, 12, 19, 45, 3)  # 16:45:03 in São Paulo (UTC-3)
    assert event.user_id is not None and event.metadata_["payment"]["id"] == "pay_080225913252"


def test_refund_after_the_grant_reverses_it_once(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED"))
    refund = _deliver_asaas(session_factory, asaas_event("PAYMENT_REFUNDED"))
    assert process(refund.id)["status"] == "processed"  # the message delivered again
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CHARGEBACK_REQUESTED"))  # nothing left
    assert ledger(session_factory) == [GRANT, ("reversal", -PRO_CREDITS, REVERSAL_REFERENCE)]
    assert balance(session_factory) == SIGNUP
    assert refund.detail.startswith(f"reversed {PRO_CREDITS} credits")
    assert count(session_factory, '"SubscriptionEvent"') == 3


def test_partial_refund_then_full_refund(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("PAYMENT_RECEIVED"))
    # 30.00 of 100.00 refunded: floor(500 x 30 / 100) = 150.
    _deliver_asaas(session_factory, asaas_event("PAYMENT_PARTIALLY_REFUNDED"))
    _deliver_asaas(session_factory, asaas_event("PAYMENT_REFUNDED"))
    assert ledger(session_factory) == [
        GRANT,
        ("reversal", -150, REVERSAL_REFERENCE),
        ("reversal", -350, REVERSAL_REFERENCE),
    ]
    assert balance(session_factory) == SIGNUP


def test_partial_refund_rounds_down_and_accumulates(session_factory, pro):
    payment = {"id": "pay_1_odd", "value": 19.9}
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED", **payment))
    first = [{"status": "DONE", "value": 7.0, "dateCreated": "2024-06-18 09:29:41"}]
    second = [*first, {"status": "DONE", "value": 2.5, "dateCreated": "2024-06-19 10:00:00"}]
    pending = [*second, {"status": "PENDING", "value": 5, "dateCreated": "2024-06-20 10:00:00"}]
    for event_id, refunds in (("evt_p1", first), ("evt_p2", second), ("evt_p3", pending)):
        _deliver_asaas(
            session_factory, asaas_event("PAYMENT_PARTIALLY_REFUNDED", event_id=event_id, refunds=refunds, **payment)
        )
    # floor(500 x 7 / 19.9) = 175, then floor(500 x 9.5 / 19.9) = 238 in total; PENDING counts not.
    assert [delta for _, delta, _ in ledger(session_factory)] == [PRO_CREDITS, -175, -63]


def test_chargeback_reverses_the_grant_even_below_zero(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED"))
    with session_factory.begin() as session:  # the app spends credits directly, through Prisma
        session.execute(text('UPDATE "CreditBalance" SET "creditsRemaining" = 20'))
    row = _deliver_asaas(session_factory, asaas_event("PAYMENT_CHARGEBACK_REQUESTED"))
    assert row.status == "processed"
    assert balance(session_factory) == 20 - PRO_CREDITS
    assert ledger(session_factory)[-1] == ("reversal", -PRO_CREDITS, REVERSAL_REFERENCE)


def test_refund_before_the_grant_is_remembered_and_the_grant_nets_to_zero(session_factory, pro):
    refund = _deliver_asaas(session_factory, asaas_event("PAYMENT_REFUNDED"))
    assert refund.status == "processed" and "remembered" in refund.detail
    confirmed = _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED"))
    _deliver_asaas(session_factory, asaas_event("PAYMENT_RECEIVED"))
    assert "reversed 500 refunded before the grant" in confirmed.detail
    assert ledger(session_factory) == [GRANT, ("reversal", -PRO_CREDITS, REVERSAL_REFERENCE)]
    assert balance(session_factory) == SIGNUP


def test_partial_refund_before_the_grant_leaves_the_rest(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("PAYMENT_PARTIALLY_REFUNDED"))
    _deliver_asaas(session_factory, asaas_event("PAYMENT_RECEIVED"))
    assert balance(session_factory) == SIGNUP + PRO_CREDITS - 150


def test_cash_receipt_undone_reverses_the_grant_once(session_factory, pro):
    cash = {"billingType": "UNDEFINED", "status": "RECEIVED_IN_CASH"}  # marked as received in cash
    _deliver_asaas(session_factory, asaas_event("PAYMENT_RECEIVED", **cash))
    undone = asaas_event("PAYMENT_RECEIVED", event_id="evt_cash_undone&1", status="PENDING", billingType="UNDEFINED")
    undone["event"] = "PAYMENT_RECEIVED_IN_CASH_UNDONE"
    row = _deliver_asaas(session_factory, undone)
    assert (row.status, row.detail.startswith(f"reversed {PRO_CREDITS} credits")) == ("processed", True), row.detail
    assert process(row.id)["status"] == "processed"  # the message delivered again
    undone_again = {**undone, "id": "evt_cash_undone&2"}  # Asaas sends the event again
    _deliver_asaas(session_factory, undone_again)
    assert ledger(session_factory) == [GRANT, ("reversal", -PRO_CREDITS, REVERSAL_REFERENCE)]
    assert balance(session_factory) == SIGNUP
    statuses = [(e.event_type, e.status) for e in subscription_events(session_factory)]
    assert statuses == [
        ("PAYMENT_RECEIVED", "RECEIVED_IN_CASH"),
        ("PAYMENT_RECEIVED_IN_CASH_UNDONE", "PENDING"),
        ("PAYMENT_RECEIVED_IN_CASH_UNDONE", "PENDING"),
    ]


def test_deleting_an_unpaid_charge_reverses_nothing_later(session_factory, pro):
    deleted = _deliver_asaas(session_factory, asaas_event("PAYMENT_DELETED"))
    assert "never granted" in deleted.detail
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED"))  # restored and paid
    assert balance(session_factory) == SIGNUP + PRO_CREDITS


def test_deleting_a_granted_payment_reverses_it(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED"))
    _deliver_asaas(session_factory, asaas_event("PAYMENT_DELETED"))
    assert balance(session_factory) == SIGNUP


def test_no_plan_logs_the_event_grants_nothing_and_says_why(session_factory):
    add_user(session_factory)
    row = _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED"))
    assert row.status == "needs_attention"
    assert row.detail == (
        "logged; no plan: plan key 'pro', subscription plan key 'pro' and paymentLink None "
        "match no Plan; nothing granted"
    )
    assert ledger(session_factory) == [] and count(session_factory, '"SubscriptionEvent"') == 1


def test_plan_by_id_when_no_plan_has_that_asaas_id(session_factory):
    add_user(session_factory)
    add_plan(session_factory, id="pro", name="Pro", credits=PRO_CREDITS)
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED"))
    assert balance(session_factory) == SIGNUP + PRO_CREDITS


def test_plan_from_the_subscription_link_then_from_the_payment_link(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("SUBSCRIPTION_CREATED"))  # sub_m5gd... is `pro`
    renewal = asaas_event(
        "PAYMENT_CONFIRMED",
        id="pay_renewal",
        externalReference=None,
        customer="cus_other",
        subscription="sub_m5gdy1upm25fbwgx",
    )
    row = _deliver_asaas(session_factory, renewal)
    assert row.detail.startswith(f"granted {PRO_CREDITS} credits of plan pro")
    add_plan(session_factory, id="pack", name="Credit pack", credits=50, asaas_id="lnk_pack")
    one_off = asaas_event(
        "PAYMENT_CONFIRMED",
        event_id="evt_pack",
        id="pay_pack",
        externalReference=CLERK_ID,
        subscription=None,
        paymentLink="lnk_pack",
    )
    _deliver_asaas(session_factory, one_off)
    assert [delta for _, delta, _ in ledger(session_factory)] == [PRO_CREDITS, 50]


def test_customer_link_finds_the_user_of_a_payment_without_reference(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CREATED"))  # teaches cus_G7Dvo4iphUNk
    later = asaas_event("PAYMENT_CONFIRMED", id="pay_later", externalReference=None, subscription=None)
    row = _deliver_asaas(session_factory, later)
    # Found its user (no longer unmatched); without a plan key nothing names its Plan.
    assert row.status == "needs_attention", row.detail
    [_, event] = subscription_events(session_factory)
    assert event.clerk_user_id == CLERK_ID


def test_current_plan_starts_when_paid_and_ends_with_the_subscription(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("SUBSCRIPTION_CREATED"))
    with session_factory() as session:
        assert current_plan(session, CLERK_ID) is None  # created, not paid
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED", subscription="sub_m5gdy1upm25fbwgx"))
    with session_factory() as session:
        assert current_plan(session, CLERK_ID).id == pro
    _deliver_asaas(session_factory, asaas_event("SUBSCRIPTION_INACTIVATED"))
    with session_factory() as session:
        assert current_plan(session, CLERK_ID) is None


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("CHECKOUT_CREATED", "ACTIVE"),
        ("CHECKOUT_PAID", "PAID"),
        ("CHECKOUT_CANCELED", "CANCELED"),
        ("CHECKOUT_EXPIRED", "EXPIRED"),
    ],
)
def test_checkout_events_are_logged_and_move_neither_credits_nor_the_plan(session_factory, pro, event_type, status):
    """A checkout's payment comes as its own PAYMENT_* events (those grant); the checkout's
    events are only logged."""
    body = asaas_event("CHECKOUT_CREATED", event_id=f"evt_{event_type}&1", status=status)
    body["event"] = event_type
    row = _deliver_asaas(session_factory, body)
    assert (row.status, row.detail) == ("processed", f"logged; {event_type} moves no credits")
    [event] = subscription_events(session_factory)
    assert (event.clerk_user_id, event.plan_key, event.status) == (CLERK_ID, "pro", status)
    assert event.event_type == event_type
    assert event.occurred_at == datetime(2024, 6, 12, 19, 40)  # 16:40 in São Paulo
    assert ledger(session_factory) == [] and balance(session_factory) == SIGNUP
    with session_factory() as session:
        assert current_plan(session, CLERK_ID) is None


def test_subscription_deleted_is_logged_and_ends_the_current_plan(session_factory, pro):
    _deliver_asaas(session_factory, asaas_event("PAYMENT_CONFIRMED", subscription="sub_m5gdy1upm25fbwgx"))
    with session_factory() as session:
        assert current_plan(session, CLERK_ID).id == pro
    deleted = asaas_event("SUBSCRIPTION_INACTIVATED", event_id="evt_sub_deleted&1", deleted=True)
    deleted["event"] = "SUBSCRIPTION_DELETED"
    row = _deliver_asaas(session_factory, deleted)
    assert (row.status, row.detail) == ("processed", "logged; SUBSCRIPTION_DELETED moves no credits")
    with session_factory() as session:
        assert current_plan(session, CLERK_ID) is None
    last = subscription_events(session_factory)[-1]
    assert (last.event_type, last.status, last.plan_key) == ("SUBSCRIPTION_DELETED", "INACTIVE", "pro")
    assert balance(session_factory) == SIGNUP + PRO_CREDITS  # what was paid for stays granted


@pytest.mark.parametrize("event_type", ["PAYMENT_SOMETHING_NEW", "SUBSCRIPTION_PAUSED"])
def test_undocumented_asaas_types_are_logged_and_ignored(session_factory, pro, event_type):
    body = asaas_event(
        "PAYMENT_CONFIRMED" if event_type.startswith("PAYMENT") else "SUBSCRIPTION_CREATED",
        event_id=f"evt_{event_type}",
    )
    body["event"] = event_type
    row = deliver(session_factory, "asaas", body)
    assert (row.status, row.attempts) == ("ignored", 1)
    assert row.detail == f"Asaas {event_type} is not a documented type (logged)"
    assert ledger(session_factory) == [] and count(session_factory, '"SubscriptionEvent"') == 1


def test_types_outside_billing_are_stored_and_ignored(session_factory):
    body = {
        "id": "evt_transfer&1",
        "event": "TRANSFER_CREATED",
        "dateCreated": "2024-06-12 16:45:03",
        "transfer": {"object": "transfer", "id": "tra_1", "value": 10},
    }
    row = deliver(session_factory, "asaas", body)
    assert (row.status, row.last_error) == ("ignored", None)
    odd = deliver(session_factory, "asaas", {"id": "evt_odd&2", "event": "CHECKOUT_SOMETHING", "checkout": None})
    assert (odd.status, odd.last_error) == ("ignored", None)


def test_a_documented_event_without_its_object_fails_at_once(session_factory):
    row = deliver(session_factory, "asaas", {"id": "evt_bad&1", "event": "PAYMENT_CONFIRMED"})
    assert (row.status, row.last_error) == ("failed", "PermanentError: PAYMENT_CONFIRMED has no `payment` object")
    assert inbox_row(session_factory, row.id).attempts == 1
