"""The tables the Next.js app owns through Prisma, in the `public` schema.

Mapped name for name to the DDL Prisma generates (see tests/fixtures/prisma-reference.sql):
quoted camelCase names, TEXT ids made in Python (Prisma's `cuid()` is client-side), TIMESTAMP(3)
without time zone in UTC, and `updatedAt` set by the ORM because Prisma gives it no default.
Never add a column or an index here: Prisma would see drift.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, Enum, ForeignKey, Index, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, utcnow
from models.ids import cuid

NOW = text("CURRENT_TIMESTAMP")


class OperationType(enum.Enum):
    AI_TEXT_CHAT = "AI_TEXT_CHAT"
    AI_IMAGE_GENERATION = "AI_IMAGE_GENERATION"
    AI_VIDEO_GENERATION = "AI_VIDEO_GENERATION"
    SHORTS_SCRIPT = "SHORTS_SCRIPT"
    SHORTS_MEDIA = "SHORTS_MEDIA"


def _id() -> Mapped[str]:
    return mapped_column(Text, primary_key=True, default=cuid)


def _created_at() -> Mapped[datetime]:
    return mapped_column("createdAt", default=utcnow, server_default=NOW)


def _updated_at() -> Mapped[datetime]:
    return mapped_column("updatedAt", default=utcnow, onupdate=utcnow)


class User(Base):
    __tablename__ = "User"
    __table_args__ = (
        Index("User_clerkId_idx", "clerkId"),
        Index("User_email_idx", "email"),
        Index("User_isActive_idx", "isActive"),
        Index("User_createdAt_idx", "createdAt"),
    )

    id: Mapped[str] = _id()
    clerk_id: Mapped[str] = mapped_column("clerkId", Text)
    email: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column("isActive", default=True, server_default=text("true"))
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()

    credit_balance: Mapped[CreditBalance | None] = relationship(back_populates="user", passive_deletes=True)


# Unique constraints are unique *indexes* in Prisma's DDL; declared here so the metadata matches.
Index("User_clerkId_key", User.__table__.c.clerkId, unique=True)
Index("User_email_key", User.__table__.c.email, unique=True)


class Feature(Base):
    __tablename__ = "Feature"
    __table_args__ = (
        Index("Feature_workspaceId_idx", "workspaceId"),
        Index("Feature_name_idx", "name"),
    )

    id: Mapped[str] = _id()
    workspace_id: Mapped[str] = mapped_column("workspaceId", Text)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class CreditBalance(Base):
    __tablename__ = "CreditBalance"
    __table_args__ = (
        Index("CreditBalance_userId_key", "userId", unique=True),
        Index("CreditBalance_clerkUserId_key", "clerkUserId", unique=True),
        Index("CreditBalance_userId_idx", "userId"),
        Index("CreditBalance_clerkUserId_idx", "clerkUserId"),
    )

    id: Mapped[str] = _id()
    user_id: Mapped[str] = mapped_column(
        "userId",
        Text,
        ForeignKey("User.id", name="CreditBalance_userId_fkey", ondelete="CASCADE", onupdate="CASCADE"),
    )
    clerk_user_id: Mapped[str] = mapped_column("clerkUserId", Text)
    credits_remaining: Mapped[int] = mapped_column("creditsRemaining", default=100, server_default=text("100"))
    last_synced_at: Mapped[datetime] = mapped_column("lastSyncedAt", default=utcnow, server_default=NOW)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()

    user: Mapped[User] = relationship(back_populates="credit_balance")


class UsageHistory(Base):
    __tablename__ = "UsageHistory"
    __table_args__ = (
        Index("UsageHistory_userId_idx", "userId"),
        Index("UsageHistory_creditBalanceId_idx", "creditBalanceId"),
        Index("UsageHistory_timestamp_idx", "timestamp"),
        Index("UsageHistory_operationType_idx", "operationType"),
    )

    id: Mapped[str] = _id()
    user_id: Mapped[str] = mapped_column(
        "userId",
        Text,
        ForeignKey("User.id", name="UsageHistory_userId_fkey", ondelete="RESTRICT", onupdate="CASCADE"),
    )
    credit_balance_id: Mapped[str] = mapped_column(
        "creditBalanceId",
        Text,
        ForeignKey(
            "CreditBalance.id",
            name="UsageHistory_creditBalanceId_fkey",
            ondelete="RESTRICT",
            onupdate="CASCADE",
        ),
    )
    operation_type: Mapped[OperationType] = mapped_column(
        "operationType", Enum(OperationType, name="OperationType", create_type=False)
    )
    credits_used: Mapped[int] = mapped_column("creditsUsed")  # > 0 usage, < 0 refund
    details: Mapped[dict[str, Any] | None]
    timestamp: Mapped[datetime] = mapped_column(default=utcnow, server_default=NOW)


class AdminSettings(Base):
    __tablename__ = "AdminSettings"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default="singleton", server_default=text("'singleton'"))
    feature_costs: Mapped[dict[str, Any] | None] = mapped_column("featureCosts")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class Plan(Base):
    __tablename__ = "Plan"
    __table_args__ = (
        Index("Plan_asaasId_key", "asaasId", unique=True),
        Index("Plan_clerkId_key", "clerkId", unique=True),
        Index("Plan_active_idx", "active"),
        Index("Plan_sortOrder_idx", "sortOrder"),
        Index("Plan_asaasId_idx", "asaasId"),
        Index("Plan_clerkId_idx", "clerkId"),
    )

    id: Mapped[str] = _id()
    asaas_id: Mapped[str | None] = mapped_column("asaasId", Text)
    clerk_id: Mapped[str | None] = mapped_column("clerkId", Text)
    clerk_name: Mapped[str | None] = mapped_column("clerkName", Text)
    name: Mapped[str] = mapped_column(Text)
    credits: Mapped[int]
    active: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    sort_order: Mapped[int] = mapped_column("sortOrder", default=0, server_default=text("0"))
    currency: Mapped[str | None] = mapped_column(Text)
    price_monthly_cents: Mapped[int | None] = mapped_column("priceMonthlyCents")
    price_yearly_cents: Mapped[int | None] = mapped_column("priceYearlyCents")
    description: Mapped[str | None] = mapped_column(Text)
    features: Mapped[dict[str, Any] | None]  # per-operation overrides of featureCosts
    badge: Mapped[str | None] = mapped_column(Text)
    highlight: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    cta_type: Mapped[str | None] = mapped_column("ctaType", Text, default="checkout", server_default=text("'checkout'"))
    cta_label: Mapped[str | None] = mapped_column("ctaLabel", Text)
    cta_url: Mapped[str | None] = mapped_column("ctaUrl", Text)
    billing_source: Mapped[str] = mapped_column(
        "billingSource", Text, default="manual", server_default=text("'manual'")
    )
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class StorageObject(Base):
    __tablename__ = "StorageObject"
    __table_args__ = (
        Index("StorageObject_userId_idx", "userId"),
        Index("StorageObject_clerkUserId_idx", "clerkUserId"),
        Index("StorageObject_provider_idx", "provider"),
        Index("StorageObject_deletedAt_idx", "deletedAt"),
        Index("StorageObject_createdAt_idx", "createdAt"),
    )

    id: Mapped[str] = _id()
    user_id: Mapped[str] = mapped_column(
        "userId",
        Text,
        ForeignKey("User.id", name="StorageObject_userId_fkey", ondelete="CASCADE", onupdate="CASCADE"),
    )
    clerk_user_id: Mapped[str] = mapped_column("clerkUserId", Text)
    provider: Mapped[str] = mapped_column(Text, default="vercel_blob", server_default=text("'vercel_blob'"))
    url: Mapped[str] = mapped_column(Text)
    pathname: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column("contentType", Text)
    size: Mapped[int]
    deleted_at: Mapped[datetime | None] = mapped_column("deletedAt")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class SubscriptionEvent(Base):
    __tablename__ = "SubscriptionEvent"
    __table_args__ = (
        Index("SubscriptionEvent_clerkUserId_idx", "clerkUserId"),
        Index("SubscriptionEvent_occurredAt_idx", "occurredAt"),
    )

    id: Mapped[str] = _id()
    user_id: Mapped[str | None] = mapped_column(
        "userId",
        Text,
        ForeignKey(
            "User.id",
            name="SubscriptionEvent_userId_fkey",
            ondelete="SET NULL",
            onupdate="CASCADE",
        ),
    )
    clerk_user_id: Mapped[str] = mapped_column("clerkUserId", Text)
    plan_key: Mapped[str | None] = mapped_column("planKey", Text)
    status: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column("eventType", Text)
    occurred_at: Mapped[datetime] = mapped_column("occurredAt", default=utcnow, server_default=NOW)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    created_at: Mapped[datetime] = _created_at()
