"""Helpers for revision files."""

from __future__ import annotations

from alembic import op


def service_schema() -> str:
    """The configured service schema (SERVICE_SCHEMA, `ingest` by default)."""
    return op.get_context().config.attributes["service_schema"]
