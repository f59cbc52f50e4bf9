"""Money and trust boundaries: whose balance a payment credited, installment sales, and the
(provider, pathname) index of storage objects.

- `payment_credits.credit_balance_id`: the balance a grant went to; reversals take from it,
  never from whoever the refund's reference or a re-pointed customer link names later.
  Backfilled from each payment's `grant:<provider>:<payment>` ledger entry.
- `payment_credits.installment_id`: the Asaas installment sale a payment belongs to; the
  installments of one sale never grant more than the plan's credits in total.
- `storage_pathnames`: (provider, pathname) -> the latest `StorageObject` of that pathname (live
  unless its `deletedAt` is set). Prisma's table cannot get this index; lookups by pathname go
  through it. Backfilled with each pathname's live row, else its latest deleted one.

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
