"""How many of a plan's credits an Asaas payment buys: the money rule for short payments and
installments.

A payment of the plan's price (less PAYMENT_SHORTFALL_TOLERANCE_CENTS) buys the plan's credits,
never more; a shorter one buys its share and needs attention; one installment of a sale buys
its share, and a sale never buys more than the plan's credits. The rules in full:
docs/design.md ("Credits: the rules").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from models.app import Plan


@dataclass(frozen=True)
class Share:
    credits: int
    why: str | None = None  # why it is less than the plan's credits, for the inbox row
    needs_attention: bool = False


def plan_price_cents(plan: Plan) -> tuple[int, str] | None:
    """The price one payment is held against, and which one it is."""
    if plan.price_monthly_cents:
        return plan.price_monthly_cents, "monthly"
    if plan.price_yearly_cents:
        return plan.price_yearly_cents, "yearly"
    return None


def payment_share(plan: Plan, value: Decimal | None, *, installment: bool, tolerance_cents: int) -> Share:
    price = plan_price_cents(plan)
    if price is None or value is None:
        return Share(plan.credits)
    price_cents, which = price
    value_cents = value * 100
    if not installment and value_cents >= price_cents - tolerance_cents:
        return Share(plan.credits)
    share = int((Decimal(plan.credits) * value_cents / price_cents).to_integral_value(rounding=ROUND_FLOOR))
    credits = max(0, min(plan.credits, share))
    paid, costs = _money(value_cents), _money(Decimal(price_cents))
    if installment:
        return Share(credits, f"an installment of {paid} of the plan's {which} price {costs}: its share")
    return Share(
        credits,
        f"the payment of {paid} is below the plan's {which} price {costs} by more than the tolerance "
        f"({_money(Decimal(tolerance_cents))}): its share only",
        needs_attention=True,
    )


def _money(cents: Decimal) -> str:
    return f"{cents / 100:.2f}"
