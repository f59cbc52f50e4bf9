"""Money and trust boundaries: `payment_credits.credit_balance_id` (the balance a grant went to,
which reversals take from), `payment_credits.installment_id` (the Asaas installment sale a
payment belongs to) and `storage_pathnames` ((provider, pathname) -> the latest `StorageObject`).
The first and the last are backfilled. Why: docs/design.md ("Credits: the rules", "Storage objects").

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.helpers import service_schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = service_schema()
    op.add_column("payment_credits", sa.Column("credit_balance_id", sa.Text), schema=schema)
    op.add_column("payment_credits", sa.Column("installment_id", sa.Text), schema=schema)
    op.create_index(
        "payment_credits_installment_id_idx",
        "payment_credits",
        ["provider", "installment_id"],
        schema=schema,
        postgresql_where=sa.text("installment_id IS NOT NULL"),
    )
    # The balance each earlier grant went to, from its `grant:<provider>:<payment>` ledger entry.
    op.execute(
        sa.text(
            f'UPDATE "{schema}".payment_credits AS p SET credit_balance_id = l.credit_balance_id '
            f'FROM "{schema}".credit_ledger AS l '
            "WHERE l.idempotency_key = 'grant:' || p.provider || ':' || p.payment_id"
        )
    )
    op.create_table(
        "storage_pathnames",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("pathname", sa.Text, primary_key=True),
        sa.Column("storage_object_id", sa.Text, nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        schema=schema,
    )
    # Each pathname's live row, else its latest deleted one.
    op.execute(
        sa.text(
            f'INSERT INTO "{schema}".storage_pathnames (provider, pathname, storage_object_id) '
            'SELECT DISTINCT ON (provider, pathname) provider, pathname, id FROM "StorageObject" '
            'ORDER BY provider, pathname, ("deletedAt" IS NULL) DESC, "createdAt" DESC, id DESC'
        )
    )


def downgrade() -> None:
    schema = service_schema()
    op.drop_table("storage_pathnames", schema=schema)
    op.drop_index("payment_credits_installment_id_idx", "payment_credits", schema=schema)
    op.drop_column("payment_credits", "installment_id", schema=schema)
    op.drop_column("payment_credits", "credit_balance_id", schema=schema)
