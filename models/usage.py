"""Idempotency records of usage debits and refunds (the authoritative outcome of each key), and
the pathname index of storage objects.

One row per idempotency key, inserted first in the debit's (or refund's) own transaction, so a
concurrent request with the same key waits on that row and then reads its committed outcome.
`status` is 'pending' only inside that transaction; no other transaction ever sees it.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, Text, text
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import Mapped, mapped_column

from models.base import SERVICE_SCHEMA, Base


class UsageRequest(Base):
    __tablename__ = "usage_requests"
    __table_args__ = (
        CheckConstraint("kind IN ('debit', 'refund', 'hold')", name="usage_requests_kind_check"),
        Index("usage_requests_refund_of_idx", "refund_of"),
        {"schema": SERVICE_SCHEMA},
    )

    idempotency_key: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    clerk_user_id: Mapped[str] = mapped_column(Text)
    operation: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)  # the result's status (every one: docs/usage-api.md)
    credits: Mapped[int | None]  # the credits debited or refunded (set when applied)
    refund_of: Mapped[str | None] = mapped_column(Text)  # a refund: the debit's key
    request: Mapped[dict[str, Any]]  # the arguments as sent
    result: Mapped[dict[str, Any]]  # the answer given for this key
    usage_id: Mapped[str | None] = mapped_column(Text)  # the UsageHistory row it wrote
    service: Mapped[str | None] = mapped_column(Text)  # the service that sent it (migration 0008)
    task_id: Mapped[str | None] = mapped_column(Text)  # the message that made it
    # Its deadline: a transaction that answers it (other than `expired`) after this fails to commit.
    not_after: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))


class StoragePathname(Base):
    """(provider, pathname) -> the latest `StorageObject` recorded for it (live unless its
    `deletedAt` is set): the index Prisma's `StorageObject` cannot get, so lookups by pathname
    never scan that table. Written only by `worker.usage.storage`, in the same transaction as
    the row it points to."""

    __tablename__ = "storage_pathnames"
    __table_args__ = ({"schema": SERVICE_SCHEMA},)

    provider: Mapped[str] = mapped_column(Text, primary_key=True)
    pathname: Mapped[str] = mapped_column(Text, primary_key=True)
    storage_object_id: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))


class HoldState(enum.StrEnum):
    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class CreditHold(Base):
    """A credit hold: `credits` taken from a balance (ledger kind `hold`) until it is captured
    (what the work cost becomes a `UsageHistory` row, the rest is released), released, or expires
    at `expires_at`. `state` moves once, from `open`; `end_answer` is what ended it."""

    __tablename__ = "credit_holds"
    __table_args__ = (
        CheckConstraint("state IN ('open', 'captured', 'released', 'expired')", name="credit_holds_state_check"),
        CheckConstraint("credits > 0", name="credit_holds_credits_check"),
        Index("credit_holds_open_expires_at_idx", "expires_at", postgresql_where=text("state = 'open'")),
        Index("credit_holds_open_user_idx", "clerk_user_id", postgresql_where=text("state = 'open'")),
        {"schema": SERVICE_SCHEMA},
    )

    hold_key: Mapped[str] = mapped_column(Text, primary_key=True)
    service: Mapped[str | None] = mapped_column(Text)
    clerk_user_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    credit_balance_id: Mapped[str] = mapped_column(Text)
    operation: Mapped[str] = mapped_column(Text)
    credits: Mapped[int]
    expires_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    state: Mapped[str] = mapped_column(Text)
    captured: Mapped[int | None]
    usage_id: Mapped[str | None] = mapped_column(Text)
    end_answer: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
    ended_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
