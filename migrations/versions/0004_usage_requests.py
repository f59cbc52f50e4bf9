"""Idempotency records for usage debits and refunds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.helpers import service_schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = service_schema()
    op.create_table(
        "usage_requests",
        sa.Column("idempotency_key", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("clerk_user_id", sa.Text, nullable=False),
        sa.Column("operation", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("credits", sa.Integer),
        sa.Column("refund_of", sa.Text),
        sa.Column("request", postgresql.JSONB, nullable=False),
        sa.Column("result", postgresql.JSONB, nullable=False),
        sa.Column("usage_id", sa.Text),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('debit', 'refund')", name="usage_requests_kind_check"),
        schema=schema,
    )
    op.create_index("usage_requests_refund_of_idx", "usage_requests", ["refund_of"], schema=schema)


def downgrade() -> None:
    op.drop_table("usage_requests", schema=service_schema())
