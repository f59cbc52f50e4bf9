"""The audit log: every operator action (the console's and the CLI's writes), who, when, from where.

Append-only, as the ledger is: the database refuses UPDATE and DELETE on it (migration 0010). An
action and its entry commit in one transaction, so an entry means the action happened.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, Text, text
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import Mapped, mapped_column

from models.base import SERVICE_SCHEMA, Base


class Channel(enum.StrEnum):
    CONSOLE = "console"
    CLI = "cli"


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint("channel IN ('console', 'cli')", name="audit_log_channel_check"),
        Index("audit_log_at_idx", "at"),
        {"schema": SERVICE_SCHEMA},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
    actor: Mapped[str] = mapped_column(Text)  # the console's login, or the CLI's --operator / login
    channel: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text)  # the client's IP (console), `cli@<host>` (CLI)
    action: Mapped[str] = mapped_column(Text)  # inbox.replay, credits.grant, ...
    target: Mapped[str | None] = mapped_column(Text)  # what it acted on: inbox ids, a user
    outcome: Mapped[str] = mapped_column(Text)  # what happened, in a line
    details: Mapped[dict[str, Any]]  # the request's arguments and the result, as data
