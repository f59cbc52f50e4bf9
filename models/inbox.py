"""The durable webhook inbox: every authenticated delivery, stored once per provider event id."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import Mapped, mapped_column

from models.base import SERVICE_SCHEMA, Base


class Source(enum.StrEnum):
    CLERK = "clerk"
    ASAAS = "asaas"


class InboxStatus(enum.StrEnum):
    PENDING = "pending"  # stored, not yet handled (or a transient failure is being retried)
    PROCESSED = "processed"  # its effect is committed
    IGNORED = "ignored"  # no handler for this type (yet); replayable
    UNMATCHED = "unmatched"  # no user/plan to apply it to yet; replayable
    FAILED = "failed"  # dead letter: retries exhausted or a payload that can never succeed


class WebhookInbox(Base):
    __tablename__ = "webhook_inbox"
    __table_args__ = (
        UniqueConstraint("source", "external_id", name="webhook_inbox_source_external_id_key"),
        CheckConstraint(
            "source IN ('clerk', 'asaas')", name="webhook_inbox_source_check"
        ),
        CheckConstraint(
            "status IN ('pending', 'processed', 'ignored', 'unmatched', 'failed')",
            name="webhook_inbox_status_check",
        ),
        # Serves the sweeper's "pending rows older than T" and nothing else.
        Index(
            "webhook_inbox_pending_received_at_idx",
            "received_at",
            postgresql_where=text("status = 'pending'"),
        ),
        {"schema": SERVICE_SCHEMA},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=text("now()")
    )
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
