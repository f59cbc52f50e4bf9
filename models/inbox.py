"""The durable webhook inbox: every authenticated delivery, stored once per provider event id."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, CheckConstraint, Connection, Identity, Index, Table, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import TIMESTAMP, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import SERVICE_SCHEMA, Base


class Source(enum.StrEnum):
    CLERK = "clerk"
    ASAAS = "asaas"


class InboxStatus(enum.StrEnum):
    PENDING = "pending"  # stored, not yet handled (or a transient failure is being retried)
    PROCESSED = "processed"  # its effect is committed
    IGNORED = "ignored"  # no handler for this type (yet); replayable
    UNMATCHED = "unmatched"  # no user to apply it to yet; replayed when the user or link appears
    # Logged, but money it should have moved did not move (no Plan matched a paid event, a paid
    # amount below the plan's price): a person must look. Replayable once the cause is fixed.
    NEEDS_ATTENTION = "needs_attention"
    FAILED = "failed"  # dead letter: a payload that can never succeed, or a run that kept dying


FINAL_STATUSES = tuple(status for status in InboxStatus if status is not InboxStatus.PENDING)


class WebhookInbox(Base):
    __tablename__ = "webhook_inbox"
    __table_args__ = (
        UniqueConstraint("source", "external_id", name="webhook_inbox_source_external_id_key"),
        CheckConstraint("source IN ('clerk', 'asaas')", name="webhook_inbox_source_check"),
        CheckConstraint(
            "status IN ('pending', 'processed', 'ignored', 'unmatched', 'needs_attention', 'failed')",
            name="webhook_inbox_status_check",
        ),
        # Serves the sweeper's "pending rows last enqueued before T" and nothing else.
        Index(
            "webhook_inbox_pending_enqueued_at_idx",
            "enqueued_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # Serves replays, which look for a user's unmatched rows (migration 0003).
        Index("webhook_inbox_unmatched_idx", "id", postgresql_where=text("status = 'unmatched'")),
        {"schema": SERVICE_SCHEMA},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)  # the last failure (dead letter: why)
    detail: Mapped[str | None] = mapped_column(Text)  # why it ended as it did (unmatched, no plan)
    last_attempt_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))  # the latest run's start
    processed_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    # When the row's latest message was sent, or, for a retry, when that message is due: the
    # sweeper tells "waiting for its message" from "its message is gone" by this (migration 0005).
    enqueued_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
    # Set while a run is in progress and cleared when it ends either way; found set when a run
    # starts, it means the previous run died mid-task (SIGKILL, OOM, hard time limit): a crash.
    running_since: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    crashes: Mapped[int] = mapped_column(server_default=text("0"))


# Built once: the statement (and its compiled form, cached by SQLAlchemy) is the same for every
# delivery; only the parameters change.
_INBOX_TABLE = cast(Table, WebhookInbox.__table__)  # declarative types it as any FromClause
_RECORD_DELIVERY = (
    insert(_INBOX_TABLE).on_conflict_do_nothing(index_elements=["source", "external_id"]).returning(_INBOX_TABLE.c.id)
)


def record_delivery(
    session: Session | Connection, *, source: str, external_id: str, event_type: str, payload: dict[str, Any]
) -> int | None:
    """Store a verified delivery once. Returns the new row's id, or None for a duplicate.

    One statement, no check-then-insert: concurrent deliveries of one event race on the
    unique key and exactly one of them gets an id back. A Core insert on the table (not the
    ORM entity), so it takes neither the ORM's bulk-insert path nor a Session: the receiver
    runs it on a plain connection.
    """
    values = {"source": source, "external_id": external_id, "event_type": event_type, "payload": payload}
    return session.execute(_RECORD_DELIVERY, values).scalar_one_or_none()
