"""Credits bought by a payment: granted once, reversed at most down to zero, in any event order.

Each payment's `payment_credits` row is locked while a grant or reversal is decided, holds the
refunded total against the payment's value, and names the balance the grant went to; each event
writes only the difference from what was reversed already. Why, and the ledger keys:
docs/design.md ("Credits: the rules").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import Plan
from models.billing import PaymentCredit
from models.ledger import LedgerKind
from worker.credits.ledger import change_credits
from worker.errors import MissingBalance


@dataclass(frozen=True)
class Payment:
    provider: str  # 'asaas' | 'clerk'
    payment_id: str
    reference: str  # names the money behind the credits, e.g. "asaas payment pay_080225913252"
    value: Decimal | None = None  # the amount paid, in the payment's currency
    installment_id: str | None = None  # the installment sale this payment is one installment of


def grant_payment(
    session: Session,
    payment: Payment,
    *,
    credit_balance_id: str,
    clerk_user_id: str,
    plan: Plan,
    credits: int | None = None,
) -> str:
    """Grant `credits` (default: the plan's) for this payment, once. The installments of one
    sale grant at most the plan's credits together. Returns what happened, for the inbox."""
    state = _locked_state(session, payment)
    if state.granted_at is not None:
        return f"{payment.reference} already granted {state.credits_granted} credits"
    state.clerk_user_id, state.plan_id, state.credit_balance_id = clerk_user_id, plan.id, credit_balance_id
    state.payment_value = payment.value if payment.value is not None else state.payment_value
    wanted = plan.credits if credits is None else credits
    granting = wanted
    if payment.installment_id is not None:
        state.installment_id = payment.installment_id
        granting = min(wanted, max(0, plan.credits - _granted_in_sale(session, payment)))
    if granting:
        change_credits(
            session,
            credit_balance_id,
            delta=granting,
            kind=LedgerKind.GRANT,
            idempotency_key=f"grant:{payment.provider}:{payment.payment_id}",
            reference=f"{payment.reference} ({plan.name})",
        )
    state.credits_granted, state.granted_at = granting, func.now()
    reversed_now = _settle_reversal(session, state, payment)
    detail = f"granted {granting} credits of plan {plan.id} for {payment.reference}"
    if granting < wanted:
        detail += f" (its installment sale {payment.installment_id} reached the plan's {plan.credits})"
    return detail + (f"; reversed {reversed_now} refunded before the grant" if reversed_now else "")


def _granted_in_sale(session: Session, payment: Payment) -> int:
    """What the other installments of this payment's sale granted, with the sale locked until
    the transaction ends (two installments of one sale granted at once take turns)."""
    sale = f"installment:{payment.provider}:{payment.installment_id}"
    session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(sale, 0))))
    granted = session.scalar(
        select(func.coalesce(func.sum(PaymentCredit.credits_granted), 0)).where(
            PaymentCredit.provider == payment.provider,
            PaymentCredit.installment_id == payment.installment_id,
            PaymentCredit.granted_at.is_not(None),
        )
    )
    return int(granted or 0)


def reverse_payment(
    session: Session,
    payment: Payment,
    *,
    refunded: Decimal | None,
    only_if_granted: bool = False,
) -> str:
    """Take back the share of the grant that `refunded` (None: all of it) represents, from the
    balance the grant went to.

    Before the grant the refund is remembered (unless `only_if_granted`), and the grant nets
    to what is left.
    """
    state = _locked_state(session, payment)
    if state.granted_at is None and only_if_granted:
        return f"{payment.reference} was never granted: nothing to reverse"
    if state.granted_at is None and payment.value is not None:
        state.payment_value = payment.value
    total = refunded if refunded is not None else (state.payment_value or Decimal(0))
    state.refunded_value = max(total, state.refunded_value or Decimal(0))
    if state.granted_at is None:
        return f"refund of {state.refunded_value} remembered: {payment.reference} is not granted yet"
    reversed_now = _settle_reversal(session, state, payment)
    return (
        f"reversed {reversed_now} credits for {payment.reference} "
        f"({state.credits_reversed} of {state.credits_granted} reversed in total)"
    )


def credits_to_reverse(granted: int, value: Decimal | None, refunded: Decimal | None) -> int:
    """floor(granted x refunded / value), never more than granted; all of it if value is unknown or 0."""
    if refunded is None or granted == 0:
        return 0
    if not value or value <= 0:
        return granted
    share = (Decimal(granted) * refunded / value).to_integral_value(rounding=ROUND_FLOOR)
    return min(granted, max(0, int(share)))


def _settle_reversal(session: Session, state: PaymentCredit, payment: Payment) -> int:
    target = credits_to_reverse(state.credits_granted, state.payment_value, state.refunded_value)
    delta = target - state.credits_reversed
    if delta <= 0:
        return 0
    if state.credit_balance_id is None:
        # Every grant records its balance (migration 0006 backfilled older ones from the ledger).
        raise MissingBalance(f"the balance granted for {payment.reference} is not recorded")
    # No floor: a reversal may take the balance below zero (the user then cannot spend); its
    # mark lets it past the database's overdraft guard, which refuses that to every other writer.
    change_credits(
        session,
        state.credit_balance_id,
        delta=-delta,
        kind=LedgerKind.REVERSAL,
        idempotency_key=f"reversal:{payment.provider}:{payment.payment_id}:{target}",
        reference=f"refund/chargeback of {payment.reference}",
        may_go_negative=True,
    )
    state.credits_reversed = target
    return delta


def _locked_state(session: Session, payment: Payment) -> PaymentCredit:
    session.execute(
        insert(PaymentCredit)
        .values(provider=payment.provider, payment_id=payment.payment_id)
        .on_conflict_do_nothing(index_elements=[PaymentCredit.provider, PaymentCredit.payment_id])
    )
    state = session.scalars(
        select(PaymentCredit)
        .where(PaymentCredit.provider == payment.provider, PaymentCredit.payment_id == payment.payment_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    state.updated_at = func.now()
    return state
