"""Billing bookkeeping: Asaas customer/subscription links, per-payment credit state, each
user's current plan.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.helpers import service_schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    default = None if nullable else sa.text("now()")
    return sa.Column(name, postgresql.TIMESTAMP(timezone=True), server_default=default, nullable=nullable)


def upgrade() -> None:
    schema = service_schema()
    op.create_table(
        "provider_links",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("external_id", sa.Text, primary_key=True),
        sa.Column("clerk_user_id", sa.Text, nullable=False),
        sa.Column("plan_key", sa.Text),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint("kind IN ('customer', 'subscription')", name="provider_links_kind_check"),
        schema=schema,
    )
    # Replays look for a user's `unmatched` rows on every new user and every new link: keep that
    # to the unmatched rows, not the whole (ever-growing) inbox.
    op.create_index(
        "webhook_inbox_unmatched_idx",
        "webhook_inbox",
        ["id"],
        schema=schema,
        postgresql_where=sa.text("status = 'unmatched'"),
    )
    op.create_index("provider_links_clerk_user_id_idx", "provider_links", ["clerk_user_id"], schema=schema)
    op.create_table(
        "payment_credits",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("payment_id", sa.Text, primary_key=True),
        sa.Column("clerk_user_id", sa.Text),
        sa.Column("plan_id", sa.Text),
        sa.Column("payment_value", sa.Numeric(14, 2)),
        sa.Column("refunded_value", sa.Numeric(14, 2)),
        sa.Column("credits_granted", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("credits_reversed", sa.Integer, server_default=sa.text("0"), nullable=False),
        _timestamp("granted_at", nullable=True),
        _timestamp("updated_at"),
        sa.CheckConstraint("credits_granted >= 0", name="payment_credits_granted_check"),
        sa.CheckConstraint("credits_reversed >= 0", name="payment_credits_reversed_check"),
        sa.CheckConstraint("credits_reversed <= credits_granted", name="payment_credits_reversed_within_grant_check"),
        schema=schema,
    )
    op.create_index("payment_credits_clerk_user_id_idx", "payment_credits", ["clerk_user_id"], schema=schema)
    op.create_table(
        "user_plans",
        sa.Column("clerk_user_id", sa.Text, primary_key=True),
        sa.Column("plan_id", sa.Text),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("occurred_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        _timestamp("updated_at"),
        schema=schema,
    )


def downgrade() -> None:
    schema = service_schema()
    op.drop_index("webhook_inbox_unmatched_idx", "webhook_inbox", schema=schema)
    op.drop_table("user_plans", schema=schema)
    op.drop_table("payment_credits", schema=schema)
    op.drop_table("provider_links", schema=schema)
