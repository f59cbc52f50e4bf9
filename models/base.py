"""Declarative base shared by every table model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase

# Models of the service's own tables are declared in this schema; the engine's
# `schema_translate_map` points it at the configured schema (SERVICE_SCHEMA), so the name is
# never read at import time.
SERVICE_SCHEMA = "ingest"


def utcnow() -> datetime:
    """Naive UTC with millisecond precision: what Prisma stores in TIMESTAMP(3) columns."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Base(DeclarativeBase):
    metadata = MetaData()
    type_annotation_map = {
        datetime: TIMESTAMP(precision=3),
        dict[str, Any]: JSONB,
    }
