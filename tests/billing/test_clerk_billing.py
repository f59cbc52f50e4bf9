"""Clerk Billing events through the inbox pipeline: the SubscriptionEvent log, one grant per
paid payment attempt, free plans once per item and period, past due in both spellings."""

from __future__ import annotations

from datetime import datetime

import pytest

from models.billing import UserPlan
from tests.support.billing import (
    CLERK_ID,
    PRO_CREDITS,
    SIGNUP,
    add_plan,
    add_user,
    balance,
    clerk_event,
    count,
    ledger,
    subscription_events,
)
from tests.support.inbox import deliver, process
from worker.plans.current_plan import current_plan


def _clerk(session_factory, body):
    return deliver(session_factory, "clerk", body)


def test_checkout_paid_grants_once_per_attempt(session_factory, pro):
    row = _clerk(session_factory, clerk_event("paymentAttempt.updated.checkout.paid"))
    assert process(row.id)["status"] == "processed"  # the message delivered again
    again = _clerk(session_factory, clerk_event("paymentAttempt.updated.checkout.paid"))  # Clerk resent it
    assert (
        row.detail == f"granted {PRO_CREDITS} credits of plan pro for clerk payment attempt cpa_2xCheckout (checkout)"
    )
    assert again.detail.endswith(f"already granted {PRO_CREDITS} credits")
    assert ledger(session_factory) == [("grant", PRO_CREDITS, "clerk payment attempt cpa_2xCheckout (checkout) (Pro)")]
    assert count(session_factory, '"SubscriptionEvent"') == 2  # two deliveries, two event ids


def test_renewal_paid_grants_again_and_is_logged(session_factory, pro):
    _clerk(session_factory, clerk_event("subscriptionItem.active"))
    _clerk(session_factory, clerk_event("paymentAttempt.updated.checkout.paid"))
    _clerk(session_factory, clerk_event("subscriptionItem.updated.renewed"))
    _clerk(session_factory, clerk_event("paymentAttempt.updated.paid"))  # charge_type recurring
    assert [delta for _, delta, _ in ledger(session_factory)] == [PRO_CREDITS, PRO_CREDITS]
    assert balance(session_factory) == SIGNUP + 2 * PRO_CREDITS
    rows = [(e.event_type, e.status, e.plan_key) for e in subscription_events(session_factory)]
    assert rows == [
        ("paymentAttempt.updated", "paid", "pro-plan"),
        ("subscriptionItem.active", "active", "pro-plan"),
        ("paymentAttempt.updated", "paid", "pro-plan"),
        ("subscriptionItem.updated", "active", "pro-plan"),
    ]


def test_failed_attempt_is_logged_and_grants_nothing(session_factory, pro):
    row = _clerk(session_factory, clerk_event("paymentAttempt.updated.failed"))
    assert (row.status, row.detail) == (
        "processed",
        "logged; paymentAttempt.updated with status failed moves no credits",
    )
    [event] = subscription_events(session_factory)
    assert (event.status, event.occurred_at) == ("failed", datetime(2024, 6, 28, 8, 0, 5))  # timestamp in seconds
    assert ledger(session_factory) == []


@pytest.mark.parametrize("event_type", ["subscriptionItem.pastDue", "subscriptionItem.past_due"])
def test_past_due_in_either_spelling_marks_the_plan_past_due(session_factory, session, pro, event_type):
    _clerk(session_factory, clerk_event("subscriptionItem.active"))
    row = _clerk(session_factory, clerk_event("subscriptionItem.pastDue", type=event_type))
    assert row.status == "processed"
    last = subscription_events(session_factory)[-1]
    assert (last.event_type, last.status, last.occurred_at) == (event_type, "past_due", datetime(2024, 6, 28, 8, 1, 40))
    assert session.get(UserPlan, CLERK_ID).status == "past_due" and current_plan(session, CLERK_ID).id == pro
    assert ledger(session_factory) == []


def test_subscription_past_due_spellings_are_both_logged(session_factory, pro):
    for event_type in ("subscription.pastDue", "subscription.past_due"):
        row = _clerk(session_factory, clerk_event("subscription.active", type=event_type, data={"status": "past_due"}))
        assert row.status == "processed"
    assert [e.status for e in subscription_events(session_factory)] == ["past_due", "past_due"]


def test_ended_item_ends_the_plan_but_an_older_event_does_not_undo_a_newer_one(session_factory, session, pro):
    _clerk(session_factory, clerk_event("subscriptionItem.active", timestamp=1719561600000))
    _clerk(
        session_factory,
        clerk_event(
            "subscriptionItem.active", type="subscriptionItem.ended", data={"status": "ended"}, timestamp=1719561700000
        ),
    )
    assert current_plan(session, CLERK_ID) is None
    _clerk(session_factory, clerk_event("subscriptionItem.active", timestamp=1716883200000))  # late, older
    session.expire_all()
    assert current_plan(session, CLERK_ID) is None


def test_free_plan_grants_once_per_item_and_period(session_factory, pro):
    add_plan(session_factory, id="plan_free", name="Free", credits=50, clerk_name="free_user")
    first = _clerk(session_factory, clerk_event("subscriptionItem.active.free"))
    _clerk(session_factory, clerk_event("subscriptionItem.active.free"))  # resent: same item and period
    _clerk(session_factory, clerk_event("subscriptionItem.active.free", data={"period_start": 1719561600000}))
    assert first.detail.startswith("granted 50 credits of plan plan_free")
    assert [ref for _, _, ref in ledger(session_factory)] == [
        "clerk free plan item csub_item_2xFree period 1716883200000 (Free)",
        "clerk free plan item csub_item_2xFree period 1719561600000 (Free)",
    ]


def test_paid_plan_item_active_grants_nothing_itself(session_factory, pro):
    row = _clerk(session_factory, clerk_event("subscriptionItem.active"))
    assert row.detail == "logged; a paid plan is granted by its payment attempt"
    assert ledger(session_factory) == []


def test_no_plan_logs_and_says_why(session_factory):
    add_user(session_factory)
    row = _clerk(session_factory, clerk_event("paymentAttempt.updated.paid"))
    assert (row.status, row.detail) == (
        "needs_attention",
        "logged; no plan matches the attempt's items ['pro-plan']; nothing granted",
    )
    assert count(session_factory, '"SubscriptionEvent"') == 1


def test_plan_by_clerk_name_when_no_clerk_id_matches(session_factory):
    add_user(session_factory)
    add_plan(session_factory, id="plan_pro", name="Pro", credits=PRO_CREDITS, clerk_name="pro-plan")
    _clerk(session_factory, clerk_event("paymentAttempt.updated.paid"))
    assert balance(session_factory) == SIGNUP + PRO_CREDITS


@pytest.mark.parametrize("event_type", ["subscriptionItem.somethingNew", "paymentAttempt.refunded"])
def test_undocumented_billing_types_are_logged_and_ignored(session_factory, pro, event_type):
    row = _clerk(session_factory, clerk_event("paymentAttempt.updated.paid", type=event_type))
    assert (row.status, row.detail) == ("ignored", f"Clerk {event_type} is not a documented type (logged)")
    assert ledger(session_factory) == [] and count(session_factory, '"SubscriptionEvent"') == 1


@pytest.mark.parametrize(
    "body",
    [
        {"type": "organization.created", "object": "event", "data": {"id": "org_1"}},
        {"type": "session.created", "object": "event", "data": {"id": "sess_1", "user_id": CLERK_ID}},
        {
            "type": "subscription.created",
            "object": "event",
            "data": {"id": "csub_1", "payer": {"organization_id": "org_1"}},
        },
    ],
)
def test_other_clerk_types_are_stored_and_ignored(session_factory, body):
    row = _clerk(session_factory, body)
    assert (row.status, row.last_error) == ("ignored", None)
    assert count(session_factory, '"SubscriptionEvent"') == 0
