"""Billing events whose user is not known yet end `unmatched`, and are processed for real (once)
when replayed after the user or the Asaas link exists."""

from __future__ import annotations

import time

from tests.support.billing import (
    CLERK_ID,
    PRO_CREDITS,
    SIGNUP,
    add_user,
    asaas_event,
    balance,
    clerk_event,
    count,
    ledger,
    subscription_events,
    waiting_for_user,
)
from tests.support.inbox import clerk_user_event, deliver, inbox_row, store


def test_payment_for_an_unknown_user_is_unmatched_then_replayed_and_granted_once(session_factory, pro_plan):
    confirmed = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    received = deliver(session_factory, "asaas", asaas_event("PAYMENT_RECEIVED"))
    assert (confirmed.status, confirmed.detail) == (
        "unmatched",
        f"user {CLERK_ID} has no User and CreditBalance yet (found by externalReference)",
    )
    assert [e.user_id for e in subscription_events(session_factory)] == [None, None]  # logged, no user yet
    add_user(session_factory)  # user.created replays the user's unmatched events by itself
    assert [inbox_row(session_factory, i).status for i in (confirmed.id, received.id)] == ["processed"] * 2
    assert ledger(session_factory) == [("grant", PRO_CREDITS, "asaas payment pay_080225913252 (Pro)")]
    assert balance(session_factory) == SIGNUP + PRO_CREDITS
    events = subscription_events(session_factory)
    assert len(events) == 2 and all(e.user_id for e in events)  # filled in, not duplicated
    assert waiting_for_user(session_factory) == []  # nothing left to replay


def test_payment_without_reference_waits_for_a_link(session_factory, pro_plan):
    add_user(session_factory)
    orphan = asaas_event(
        "PAYMENT_CONFIRMED",
        id="pay_orphan",
        externalReference=None,
        customer="cus_000000008773",
        subscription="sub_m5gdy1upm25fbwgx",
    )
    row = deliver(session_factory, "asaas", orphan)
    assert row.status == "unmatched"
    assert row.detail == (
        "no user: externalReference None names no Clerk user and no link is known for "
        "customer cus_000000008773, subscription sub_m5gdy1upm25fbwgx"
    )
    assert count(session_factory, '"SubscriptionEvent"') == 0  # no user to log it for
    assert waiting_for_user(session_factory) == []  # nothing links it to the user yet
    # Carries the reference: the link it teaches replays the waiting payment by itself.
    deliver(session_factory, "asaas", asaas_event("SUBSCRIPTION_CREATED"))
    assert inbox_row(session_factory, row.id).detail.startswith(f"granted {PRO_CREDITS} credits of plan pro")
    assert waiting_for_user(session_factory) == []
    assert count(session_factory, '"SubscriptionEvent"') == 2


def test_reference_of_another_system_is_not_a_user(session_factory, pro_plan):
    row = deliver(
        session_factory,
        "asaas",
        asaas_event("PAYMENT_CONFIRMED", externalReference="056984", customer="cus_x", subscription=None),
    )
    assert row.status == "unmatched" and "'056984' names no Clerk user" in row.detail


def test_clerk_paid_attempt_before_the_user_is_replayed_once(session_factory, pro_plan):
    row = deliver(session_factory, "clerk", clerk_event("paymentAttempt.updated.paid"))
    assert row.status == "unmatched"
    deliver(session_factory, "clerk", clerk_event("paymentAttempt.updated.failed"))  # processed: not replayed
    add_user(session_factory)  # replays the unmatched attempt
    assert inbox_row(session_factory, row.id).status == "processed"
    assert waiting_for_user(session_factory) == []
    assert balance(session_factory) == SIGNUP + PRO_CREDITS
    assert count(session_factory, '"SubscriptionEvent"') == 2


def test_user_created_replays_waiting_payments_through_a_real_worker(
    celery_worker, producer, session_factory, pro_plan
):
    payment = store(session_factory, "asaas", asaas_event("PAYMENT_RECEIVED"))
    producer.send_task("webhooks.process", kwargs={"inbox_id": payment}).get(timeout=30)
    assert inbox_row(session_factory, payment).status == "unmatched"
    user = store(session_factory, "clerk", clerk_user_event("user.created", CLERK_ID, 1, email_addresses=[]))
    producer.send_task("webhooks.process", kwargs={"inbox_id": user}).get(timeout=30)
    assert "replaying 1 unmatched billing event" in inbox_row(session_factory, user).detail
    deadline = time.monotonic() + 30
    while inbox_row(session_factory, payment).status != "processed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inbox_row(session_factory, payment).status == "processed"
    assert balance(session_factory) == SIGNUP + PRO_CREDITS
    assert count(session_factory, '"SubscriptionEvent"') == 1
