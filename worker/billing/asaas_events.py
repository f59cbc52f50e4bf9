"""Asaas `PAYMENT_*`, `SUBSCRIPTION_*` and `CHECKOUT_*` events.

Every one of them is logged as a `SubscriptionEvent` once its user is known. Money moves only
for payments: `PAYMENT_CONFIRMED`/`PAYMENT_RECEIVED` grant the plan's credits once per payment
id (one payment sends both); refunds, chargebacks, undone cash receipts and the deletion of a
granted payment reverse that grant (`worker.credits.grants_and_reversals`). `PAYMENT_CREATED` never grants:
subscription charges are created 40 days ahead. A type Asaas has not documented is logged and
left `ignored`, never failed.
"""

from __future__ import annotations

import dataclasses
import enum
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.orm import Session

from models.app import Plan
from models.inbox import InboxStatus
from models.settings import process_settings
from worker.billing.accounts import Account, find_account
from worker.billing.asaas_links import Owner, describe_unresolved, resolve_owner
from worker.billing.payment_share import payment_share
from worker.billing.provider_times import asaas_date, asaas_timestamp
from worker.billing.subscription_log import BillingEvent, log_subscription_event, received_time
from worker.credits.grants_and_reversals import Payment, grant_payment, reverse_payment
from worker.errors import PermanentError
from worker.plans.catalog import plan_for_asaas
from worker.plans.current_plan import PlanChange, record_plan_change
from worker.registry import Delivery, Outcome, handles

PROVIDER = "asaas"
_OBJECT_BY_PREFIX = {"PAYMENT_": "payment", "SUBSCRIPTION_": "subscription", "CHECKOUT_": "checkout"}

# The types Asaas documents (docs.asaas.com: payment, subscription and checkout events).
DOCUMENTED_EVENTS = frozenset(
    [
        f"PAYMENT_{name}"
        for name in (
            "CREATED",
            "AWAITING_RISK_ANALYSIS",
            "APPROVED_BY_RISK_ANALYSIS",
            "REPROVED_BY_RISK_ANALYSIS",
            "AUTHORIZED",
            "UPDATED",
            "CONFIRMED",
            "RECEIVED",
            "CREDIT_CARD_CAPTURE_REFUSED",
            "ANTICIPATED",
            "OVERDUE",
            "DELETED",
            "RESTORED",
            "REFUNDED",
            "PARTIALLY_REFUNDED",
            "REFUND_IN_PROGRESS",
            "RECEIVED_IN_CASH_UNDONE",
            "CHARGEBACK_REQUESTED",
            "CHARGEBACK_DISPUTE",
            "AWAITING_CHARGEBACK_REVERSAL",
            "DUNNING_RECEIVED",
            "DUNNING_REQUESTED",
            "BANK_SLIP_VIEWED",
            "CHECKOUT_VIEWED",
            "SPLIT_DIVERGENCE_BLOCK",
            "SPLIT_DIVERGENCE_BLOCK_FINISHED",
        )
    ]
    + [
        f"SUBSCRIPTION_{name}"
        for name in (
            "CREATED",
            "UPDATED",
            "INACTIVATED",
            "DELETED",
            "SPLIT_DIVERGENCE_BLOCK",
            "SPLIT_DIVERGENCE_BLOCK_FINISHED",
        )
    ]
    + [f"CHECKOUT_{name}" for name in ("CREATED", "CANCELED", "EXPIRED", "PAID")]
)


class MoneyRule(enum.Enum):
    GRANT = "grant"
    REVERSE_ALL = "reverse all"
    REVERSE_ALL_IF_GRANTED = "reverse all if granted"  # deleting an unpaid charge is routine
    REVERSE_REFUNDED = "reverse the refunded share"


MONEY_RULES = {
    "PAYMENT_CONFIRMED": MoneyRule.GRANT,
    "PAYMENT_RECEIVED": MoneyRule.GRANT,
    "PAYMENT_REFUNDED": MoneyRule.REVERSE_ALL,
    "PAYMENT_CHARGEBACK_REQUESTED": MoneyRule.REVERSE_ALL,
    "PAYMENT_RECEIVED_IN_CASH_UNDONE": MoneyRule.REVERSE_ALL,
    "PAYMENT_DELETED": MoneyRule.REVERSE_ALL_IF_GRANTED,
    "PAYMENT_PARTIALLY_REFUNDED": MoneyRule.REVERSE_REFUNDED,
}

# How an event moves the user's current plan. A plan starts when it is paid for, not when a
# subscription is created (its first charge may never be paid).
PLAN_CHANGES = {
    "PAYMENT_CONFIRMED": PlanChange.STARTS,
    "PAYMENT_RECEIVED": PlanChange.STARTS,
    "PAYMENT_OVERDUE": PlanChange.STATUS,
    "SUBSCRIPTION_UPDATED": PlanChange.STATUS,
    "SUBSCRIPTION_INACTIVATED": PlanChange.ENDS,
    "SUBSCRIPTION_DELETED": PlanChange.ENDS,
}


@handles(PROVIDER, prefixes=tuple(_OBJECT_BY_PREFIX))
def apply_asaas_event(session: Session, delivery: Delivery) -> Outcome:
    outcome, owner = _apply(session, delivery)
    if owner is not None and owner.learned_link:
        # Events that carried only this customer/subscription id waited as `unmatched`.
        return dataclasses.replace(outcome, unblocks_user=owner.clerk_user_id)
    return outcome


def _apply(session: Session, delivery: Delivery) -> tuple[Outcome, Owner | None]:
    documented = delivery.event_type in DOCUMENTED_EVENTS
    kind = _object_kind(delivery.event_type)
    obj = delivery.payload.get(kind)
    if not isinstance(obj, dict):
        if not documented:
            return _ignored(delivery, f"it has no `{kind}` object"), None
        raise PermanentError(f"{delivery.event_type} has no `{kind}` object")
    owner = resolve_owner(session, obj, kind)
    if owner is None:
        if not documented:
            return _ignored(delivery, describe_unresolved(obj, kind)), None
        return Outcome.unmatched(describe_unresolved(obj, kind)), None
    account = find_account(session, owner.clerk_user_id)
    plan = plan_for_asaas(session, [owner.plan_key, owner.subscription_plan_key], obj.get("paymentLink"))
    event = _billing_event(delivery, obj, owner, plan)
    log_subscription_event(session, delivery, event, account.user_id if account else None)
    if not documented:
        return _ignored(delivery, "logged"), owner
    if plan is not None and delivery.event_type in PLAN_CHANGES:
        record_plan_change(
            session,
            clerk_user_id=owner.clerk_user_id,
            plan_id=plan.id,
            provider=PROVIDER,
            status=event.status,
            occurred_at=event.occurred_at,
            change=PLAN_CHANGES[delivery.event_type],
        )
    return _apply_money(session, delivery.event_type, obj, owner, account, plan), owner


def _apply_money(
    session: Session, event_type: str, obj: dict[str, Any], owner: Owner, account: Account | None, plan: Plan | None
) -> Outcome:
    rule = MONEY_RULES.get(event_type)
    if rule is None:
        return Outcome.processed(f"logged; {event_type} moves no credits")
    payment = _payment(obj)
    if rule is MoneyRule.GRANT:
        if account is None or account.credit_balance_id is None:
            return Outcome.unmatched(
                f"user {owner.clerk_user_id} has no User and CreditBalance yet (found by {owner.found_by})"
            )
        if plan is None:
            return Outcome.needs_attention(f"logged; no plan: {_plan_clues(obj, owner)}; nothing granted")
        share = payment_share(
            plan,
            payment.value,
            installment=payment.installment_id is not None,
            tolerance_cents=process_settings().payment_shortfall_tolerance_cents,
        )
        detail = grant_payment(
            session,
            payment,
            credit_balance_id=account.credit_balance_id,
            clerk_user_id=owner.clerk_user_id,
            plan=plan,
            credits=share.credits,
        )
        if share.why is not None and "already granted" not in detail:
            detail = f"{detail}: {share.why}"
        return Outcome.needs_attention(detail) if share.needs_attention else Outcome.processed(detail)
    if rule is MoneyRule.REVERSE_REFUNDED:
        refunded = refunded_total(obj)
        if refunded == 0:
            return Outcome.processed("logged; no completed refund in payment.refunds: nothing reversed")
    else:
        refunded = None  # all of it
    # From the balance the grant went to, whoever the event's reference or links name now.
    return Outcome.processed(
        reverse_payment(
            session,
            payment,
            refunded=refunded,
            only_if_granted=rule is MoneyRule.REVERSE_ALL_IF_GRANTED,
        )
    )


def refunded_total(payment: dict[str, Any]) -> Decimal:
    """The sum of the payment's completed refunds (`refunds[]` entries with status DONE)."""
    refunds = payment.get("refunds")
    if not isinstance(refunds, list):
        raise PermanentError("payment.refunds is missing: the refunded amount is unknown")
    done = [r for r in refunds if isinstance(r, dict) and r.get("status", "DONE") == "DONE"]
    return sum((_money(r.get("value"), "refunds[].value") for r in done), Decimal(0))


def _payment(obj: dict[str, Any]) -> Payment:
    payment_id = obj.get("id")
    if not isinstance(payment_id, str) or not payment_id:
        raise PermanentError("payment.id is missing")
    value = obj.get("value")
    installment = obj.get("installment")
    return Payment(
        PROVIDER,
        payment_id,
        f"asaas payment {payment_id}",
        None if value is None else _money(value, "payment.value"),
        installment if isinstance(installment, str) and installment else None,
    )


def _billing_event(delivery: Delivery, obj: dict[str, Any], owner: Owner, plan: Plan | None) -> BillingEvent:
    plan_key = owner.plan_key or owner.subscription_plan_key
    if not plan_key and plan is not None:
        plan_key = plan.asaas_id or plan.id
    status = obj.get("status")
    return BillingEvent(
        clerk_user_id=owner.clerk_user_id,
        plan_key=plan_key,
        status=status if isinstance(status, str) and status else delivery.event_type,
        event_type=delivery.event_type,
        occurred_at=(
            asaas_timestamp(delivery.payload.get("dateCreated"))
            or asaas_date(obj.get("dateCreated"))
            or received_time(delivery)
        ),
        metadata=delivery.payload,
    )


def _object_kind(event_type: str) -> str:
    return next(kind for prefix, kind in _OBJECT_BY_PREFIX.items() if event_type.startswith(prefix))


def _ignored(delivery: Delivery, why: str) -> Outcome:
    return Outcome(InboxStatus.IGNORED, f"Asaas {delivery.event_type} is not a documented type ({why})")


def _plan_clues(obj: dict[str, Any], owner: Owner) -> str:
    return (
        f"plan key {owner.plan_key!r}, subscription plan key {owner.subscription_plan_key!r} "
        f"and paymentLink {obj.get('paymentLink')!r} match no Plan"
    )


def _money(value: object, field: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PermanentError(f"{field} is not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise PermanentError(f"{field} is not a valid amount: {value!r}")
    return amount
