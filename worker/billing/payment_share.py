"""How many of a plan's credits an Asaas payment buys: the money rule for short payments and
installments.

- The plan's price is `Plan.priceMonthlyCents`, else `Plan.priceYearlyCents` (a plan sold yearly
  only); a plan with neither has no price to check, and every payment buys its full credits.
- A payment of at least the price, less PAYMENT_SHORTFALL_TOLERANCE_CENTS, buys the plan's
  credits (never more: Plan.credits is what one payment grants).
- A payment short by more than the tolerance buys its share, floor(credits x value / price), and
  its inbox row ends `needs_attention` saying why: money came in, but not the plan's price.
- One installment of an installment sale (`payment.installment` set) buys its share the same way,
  as a matter of course (no attention needed); the installments of one sale never buy more than
  the plan's credits in total (`worker.credits.grants_and_reversals`). A refund of an
  installment reverses what that installment granted, as for any payment.
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
