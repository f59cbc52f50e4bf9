"""Credit holds: `credit_holds` (one row per hold: what it holds, until when, how it ended), the
ledger kinds `hold` and `release`, and usage requests of kind `hold`.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.helpers import service_schema

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

LEDGER_KINDS = "'signup', 'grant', 'reversal', 'usage', 'refund', 'adjustment', 'external'"


def upgrade() -> None:
    schema = service_schema()
    op.create_table(
        "credit_holds",
        sa.Column("hold_key", sa.Text, primary_key=True),
        sa.Column("service", sa.Text),
        sa.Column("clerk_user_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("credit_balance_id", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("credits", sa.Integer, nullable=False),
        sa.Column("expires_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("captured", sa.Integer),
        sa.Column("usage_id", sa.Text),
        sa.Column("end_answer", postgresql.JSONB),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("ended_at", postgresql.TIMESTAMP(timezone=True)),
        sa.CheckConstraint("state IN ('open', 'captured', 'released', 'expired')", name="credit_holds_state_check"),
        sa.CheckConstraint("credits > 0", name="credit_holds_credits_check"),
        schema=schema,
    )
    # What the expiry sweep and the views of open holds read: open holds only.
    op.create_index(
        "credit_holds_open_expires_at_idx",
        "credit_holds",
        ["expires_at"],
        schema=schema,
        postgresql_where=sa.text("state = 'open'"),
    )
    op.create_index(
        "credit_holds_open_user_idx",
        "credit_holds",
        ["clerk_user_id"],
        schema=schema,
        postgresql_where=sa.text("state = 'open'"),
    )
    _kinds(schema, "credit_ledger", "credit_ledger_kind_check", f"{LEDGER_KINDS}, 'hold', 'release'")
    _kinds(schema, "usage_requests", "usage_requests_kind_check", "'debit', 'refund', 'hold'")


def downgrade() -> None:
    schema = service_schema()
    _kinds(schema, "usage_requests", "usage_requests_kind_check", "'debit', 'refund'")
    _kinds(schema, "credit_ledger", "credit_ledger_kind_check", LEDGER_KINDS)
    op.drop_index("credit_holds_open_user_idx", "credit_holds", schema=schema)
    op.drop_index("credit_holds_open_expires_at_idx", "credit_holds", schema=schema)
    op.drop_table("credit_holds", schema=schema)


def _kinds(schema: str, table: str, name: str, kinds: str) -> None:
    op.drop_constraint(name, table, schema=schema, type_="check")
    op.create_check_constraint(name, table, f"kind IN ({kinds})", schema=schema)
