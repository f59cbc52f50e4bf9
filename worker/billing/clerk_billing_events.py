"""Clerk Billing: `subscription.*`, `subscriptionItem.*` and `paymentAttempt.*` events.

Every one is logged as a `SubscriptionEvent` for `data.payer.user_id` (Clerk spells past due
both `pastDue` and `past_due`; both are accepted). A `paymentAttempt.updated` with status
`paid` grants its plan's credits once per payment attempt; a free plan has no payment, so its
`subscriptionItem.active` grants once per subscription item and `period_start`. Item events move
the user's current plan. A billing type Clerk has not documented is logged and left `ignored`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from models.app import Plan
from models.inbox import InboxStatus
from worker.billing.accounts import Account, find_account
from worker.billing.provider_times import clerk_epoch
from worker.billing.subscription_log import BillingEvent, log_subscription_event, received_time
from worker.credits.grants_and_reversals import Payment, grant_payment
from worker.errors import PermanentError
from worker.plans.catalog import plan_for_clerk
from worker.plans.current_plan import PlanChange, record_plan_change
from worker.registry import Delivery, Outcome, handles

PROVIDER = "clerk"

# Documented types (clerk-docs Billing webhooks, clerk/openapi-specs webhooks), past due
# spelled `pastDue`: `canonical_type` maps `past_due` onto it.
DOCUMENTED_EVENTS = frozenset(
    [f"subscription.{name}" for name in ("created", "updated", "active", "pastDue")]
    + [
        f"subscriptionItem.{name}"
        for name in (
            "created",
            "updated",
            "active",
            "canceled",
            "upcoming",
            "ended",
            "abandoned",
            "incomplete",
            "pastDue",
            "freeTrialEnding",
            "expired",
        )
    ]
    + ["paymentAttempt.created", "paymentAttempt.updated"]
)

# How an item's status moves the user's current plan; other statuses leave it alone.
PLAN_CHANGE_BY_ITEM_STATUS = {
    "active": PlanChange.STARTS,
    "past_due": PlanChange.STATUS,
    "canceled": PlanChange.STATUS,  # still usable until the period ends
    "ended": PlanChange.ENDS,
    "expired": PlanChange.ENDS,
    "abandoned": PlanChange.ENDS,
    "incomplete": PlanChange.ENDS,
}


def canonical_type(event_type: str) -> str:
    return event_type.replace("past_due", "pastDue")


def canonical_status(status: object) -> str | None:
    if not isinstance(status, str) or not status:
        return None
    return "past_due" if status in ("pastDue", "past_due") else status


@handles(PROVIDER, prefixes=("subscription.", "subscriptionItem.", "paymentAttempt."))
def apply_clerk_billing_event(session: Session, delivery: Delivery) -> Outcome:
    event_type = canonical_type(delivery.event_type)
    documented = event_type in DOCUMENTED_EVENTS
    data = delivery.payload.get("data")
    if not isinstance(data, dict):
        if not documented:
            return _ignored(delivery, "it has no `data` object")
        raise PermanentError("payload has no `data` object")
    payer = data.get("payer")
    clerk_user_id = payer.get("user_id") if isinstance(payer, dict) else None
    if not isinstance(clerk_user_id, str) or not clerk_user_id:
        return Outcome(InboxStatus.IGNORED, "the payer is not a user (organization billing is not handled)")
    items = subscription_items(event_type, data)
    account = find_account(session, clerk_user_id)
    event = _billing_event(delivery, data, clerk_user_id, items)
    log_subscription_event(session, delivery, event, account.user_id if account else None)
    if not documented:
        return _ignored(delivery, "logged")
    if event_type.startswith("subscriptionItem."):
        _move_current_plan(session, clerk_user_id, data, event)
    if event_type == "paymentAttempt.updated" and event.status == "paid":
        return _grant_paid_attempt(session, data, clerk_user_id, account, items)
    if event_type == "subscriptionItem.active":
        return _grant_free_period(session, data, clerk_user_id, account)
    return Outcome.processed(f"logged; {event_type} with status {event.status} moves no credits")


def subscription_items(event_type: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The subscription items an event is about: the item itself, or the list it carries."""
    if event_type.startswith("subscriptionItem."):
        return [data]
    listed = data.get("subscription_items" if event_type.startswith("paymentAttempt.") else "items")
    return [item for item in listed or [] if isinstance(item, dict)]


def _grant_paid_attempt(
    session: Session, data: dict[str, Any], clerk_user_id: str, account: Account | None, items: list[dict[str, Any]]
) -> Outcome:
    attempt_id = data.get("id")
    if not isinstance(attempt_id, str) or not attempt_id:
        raise PermanentError("data.id (the payment attempt) is missing")
    if account is None or account.credit_balance_id is None:
        return Outcome.unmatched(f"user {clerk_user_id} has no User and CreditBalance yet")
    # One grant per attempt: the first item whose plan is known (Clerk charges one plan per payer).
    plan = next(filter(None, (_plan_of(session, item) for item in items)), None)
    if plan is None:
        slugs = [_plan_payload(item).get("slug") for item in items]
        return Outcome.needs_attention(f"logged; no plan matches the attempt's items {slugs}; nothing granted")
    payment = Payment(PROVIDER, attempt_id, f"clerk payment attempt {attempt_id} ({data.get('charge_type')})")
    return Outcome.processed(
        grant_payment(
            session, payment, credit_balance_id=account.credit_balance_id, clerk_user_id=clerk_user_id, plan=plan
        )
    )


def _grant_free_period(session: Session, item: dict[str, Any], clerk_user_id: str, account: Account | None) -> Outcome:
    plan = _plan_of(session, item)
    if plan is None:
        return Outcome.needs_attention(f"logged; no plan matches {_plan_payload(item).get('slug')!r}; nothing granted")
    if not is_free(item, plan) or plan.credits <= 0:
        return Outcome.processed("logged; a paid plan is granted by its payment attempt")
    if account is None or account.credit_balance_id is None:
        return Outcome.unmatched(f"user {clerk_user_id} has no User and CreditBalance yet")
    item_id, period_start = item.get("id"), item.get("period_start")
    payment = Payment(
        PROVIDER, f"free:{item_id}:{period_start}", f"clerk free plan item {item_id} period {period_start}"
    )
    return Outcome.processed(
        grant_payment(
            session, payment, credit_balance_id=account.credit_balance_id, clerk_user_id=clerk_user_id, plan=plan
        )
    )


def is_free(item: dict[str, Any], plan: Plan) -> bool:
    """Clerk's plan amount (`amount`, or `fee.amount` in newer payloads), else the Plan's price."""
    payload = _plan_payload(item)
    fee = payload.get("fee")
    amount = payload.get("amount", fee.get("amount") if isinstance(fee, dict) else None)
    if amount is None:
        amount = plan.price_monthly_cents
    return amount == 0


def _move_current_plan(session: Session, clerk_user_id: str, item: dict[str, Any], event: BillingEvent) -> None:
    change = PLAN_CHANGE_BY_ITEM_STATUS.get(event.status)
    plan = _plan_of(session, item)
    if change is None or plan is None:
        return
    record_plan_change(
        session,
        clerk_user_id=clerk_user_id,
        plan_id=plan.id,
        provider=PROVIDER,
        status=event.status,
        occurred_at=event.occurred_at,
        change=change,
    )


def _billing_event(
    delivery: Delivery, data: dict[str, Any], clerk_user_id: str, items: list[dict[str, Any]]
) -> BillingEvent:
    # A subscription lists old and new items: its plan is the active one's.
    main = next((item for item in items if item.get("status") == "active"), items[0] if items else {})
    occurred_at = (
        clerk_epoch(delivery.payload.get("timestamp"))
        or clerk_epoch(data.get("updated_at"))
        or clerk_epoch(data.get("created_at"))
        or received_time(delivery)
    )
    return BillingEvent(
        clerk_user_id=clerk_user_id,
        plan_key=_plan_payload(main).get("slug") or _plan_payload(main).get("id"),
        status=canonical_status(data.get("status")) or delivery.event_type.rsplit(".", 1)[-1],
        event_type=delivery.event_type,
        occurred_at=occurred_at,
        metadata=delivery.payload,
    )


def _plan_of(session: Session, item: dict[str, Any]) -> Plan | None:
    payload = _plan_payload(item)
    return plan_for_clerk(session, payload.get("id") or item.get("plan_id"), payload.get("slug"))


def _plan_payload(item: dict[str, Any]) -> dict[str, Any]:
    plan = item.get("plan")
    return plan if isinstance(plan, dict) else {}


def _ignored(delivery: Delivery, why: str) -> Outcome:
    return Outcome(InboxStatus.IGNORED, f"Clerk {delivery.event_type} is not a documented type ({why})")
