"""Declarative base shared by every table model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Integer, MetaData, Table, Text, literal_column, null
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeEngine

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
    type_annotation_map: ClassVar[dict[Any, TypeEngine[Any] | type[TypeEngine[Any]]]] = {
        datetime: TIMESTAMP(precision=3),
        dict[str, Any]: JSONB,
    }


def table_of(model: type[Base]) -> Table:
    """The model's `Table`, for Core statements on it. (Declarative types `__table__` as any
    FromClause, since a model may be mapped to a join or a select; ours are all tables.)"""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a Table")
    return table


def constant(value: str | int | None) -> ColumnElement[Any]:
    """A fixed value of a statement built once (a status, a provider name, a JSON key), written
    into its SQL instead of bound: a bound parameter is converted by SQLAlchemy and by psycopg
    and sent again on every execution, and the inbox's replay statement, with ~30 of them, spent
    a third of its Python time on that. Only for values written in the code, never for input."""
    if value is None:
        return null()
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"not a SQL constant: {value!r}")
    if isinstance(value, int):
        return literal_column(str(value), type_=Integer)
    return literal_column("'" + value.replace("'", "''") + "'", type_=Text)
