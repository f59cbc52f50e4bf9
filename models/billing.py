"""The service's billing bookkeeping: who an Asaas customer/subscription is, what each payment
granted and reversed, and each user's current plan."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Index, Numeric, Text, text
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import Mapped, mapped_column

from models.base import SERVICE_SCHEMA, Base


class ProviderLink(Base):
    """An Asaas customer or subscription id, linked to the Clerk user (and plan) it belongs to.

    Learned from any event that carried both the Asaas id and a resolvable `externalReference`.
    """

    __tablename__ = "provider_links"
    __table_args__ = (
        CheckConstraint("kind IN ('customer', 'subscription')", name="provider_links_kind_check"),
        Index("provider_links_clerk_user_id_idx", "clerk_user_id"),
        {"schema": SERVICE_SCHEMA},
    )

    provider: Mapped[str] = mapped_column(Text, primary_key=True)  # 'asaas'
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    external_id: Mapped[str] = mapped_column(Text, primary_key=True)
    clerk_user_id: Mapped[str] = mapped_column(Text)
    plan_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))


class PaymentCredit(Base):
    """What one provider payment granted and what was reversed of it: the state that makes each
    grant and reversal happen exactly once, whatever order the events arrive in.

    Reversals are kept as money (`refunded_value`, the largest refunded total seen), not credits,
    so a refund that arrives before its grant is remembered and the late grant nets to what is
    left: credits reversed = floor(credits_granted x refunded_value / payment_value).
    """

    __tablename__ = "payment_credits"
    __table_args__ = (
        CheckConstraint("credits_granted >= 0", name="payment_credits_granted_check"),
        CheckConstraint("credits_reversed >= 0", name="payment_credits_reversed_check"),
        # The last guard of "the reversals of a payment never exceed its grant".
        CheckConstraint("credits_reversed <= credits_granted", name="payment_credits_reversed_within_grant_check"),
        Index("payment_credits_clerk_user_id_idx", "clerk_user_id"),
        Index(
            "payment_credits_installment_id_idx",
            "provider",
            "installment_id",
            postgresql_where=text("installment_id IS NOT NULL"),
        ),
        {"schema": SERVICE_SCHEMA},
    )

    provider: Mapped[str] = mapped_column(Text, primary_key=True)  # 'asaas' | 'clerk'
    payment_id: Mapped[str] = mapped_column(Text, primary_key=True)
    clerk_user_id: Mapped[str | None] = mapped_column(Text)
    # The balance the grant went to: reversals take from it, whoever the payment names later.
    credit_balance_id: Mapped[str | None] = mapped_column(Text)
    # The Asaas installment sale this payment is one installment of.
    installment_id: Mapped[str | None] = mapped_column(Text)
    plan_id: Mapped[str | None] = mapped_column(Text)
    payment_value: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    refunded_value: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))  # None: no refund seen
    credits_granted: Mapped[int] = mapped_column(server_default=text("0"))
    credits_reversed: Mapped[int] = mapped_column(server_default=text("0"))
    granted_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))


class UserPlan(Base):
    """Each user's current plan, from the latest subscription events (read by usage costs)."""

    __tablename__ = "user_plans"
    __table_args__ = ({"schema": SERVICE_SCHEMA},)

    clerk_user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    plan_id: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    # The provider time of the event that set it: an older event never overwrites a newer one.
    occurred_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
