"""Per-user sync state for Clerk's out-of-order deliveries (last-write-wins, no resurrection)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Text, text
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import Mapped, mapped_column

from models.base import SERVICE_SCHEMA, Base


class UserSyncState(Base):
    __tablename__ = "user_sync_state"
    __table_args__ = ({"schema": SERVICE_SCHEMA},)

    clerk_user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # `data.updated_at` (ms) of the newest user.created/updated applied.
    last_updated_at_ms: Mapped[int] = mapped_column(BigInteger)
    # Set by user.deleted: nothing older or newer brings the user back.
    deleted_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
