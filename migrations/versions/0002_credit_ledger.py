"""Credit ledger (append-only), the trigger that records the app's own balance changes, and
per-user Clerk sync state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.helpers import service_schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The service's ledger function sets this (SET LOCAL) in its own transactions, so the trigger
# below does not count the service's changes a second time.
LEDGER_WRITE_SETTING = "pedro_webhooks.ledger_write"


def upgrade() -> None:
    schema = service_schema()
    op.create_table(
        "credit_ledger",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("clerk_user_id", sa.Text, nullable=False),
        sa.Column("credit_balance_id", sa.Text, nullable=False),
        sa.Column("delta", sa.Integer, nullable=False),
        sa.Column("balance_after", sa.Integer, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("reference", sa.Text),
        sa.Column(
            "created_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('signup', 'grant', 'reversal', 'usage', 'refund', 'adjustment', 'external')",
            name="credit_ledger_kind_check",
        ),
        sa.CheckConstraint("idempotency_key IS NOT NULL OR kind = 'external'", name="credit_ledger_key_check"),
        schema=schema,
    )
    op.create_index(
        "credit_ledger_idempotency_key_key",
        "credit_ledger",
        ["idempotency_key"],
        unique=True,
        schema=schema,
    )
    op.create_index("credit_ledger_user_id_idx", "credit_ledger", ["user_id"], schema=schema)
    op.execute(
        f"""
        CREATE FUNCTION "{schema}".credit_ledger_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'credit_ledger is append-only: % refused', TG_OP
                USING ERRCODE = 'restrict_violation';
        END $$;
        CREATE TRIGGER credit_ledger_append_only
            BEFORE UPDATE OR DELETE ON "{schema}".credit_ledger
            FOR EACH ROW EXECUTE FUNCTION "{schema}".credit_ledger_refuse_change();

        CREATE FUNCTION "{schema}".credit_balance_record_external_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            change integer;
        BEGIN
            IF current_setting('{LEDGER_WRITE_SETTING}', true) = 'on' THEN
                RETURN NULL;  -- the service's ledger function wrote its own entry
            END IF;
            IF TG_OP = 'INSERT' THEN
                change := NEW."creditsRemaining";
            ELSE
                change := NEW."creditsRemaining" - OLD."creditsRemaining";
            END IF;
            IF change <> 0 THEN
                INSERT INTO "{schema}".credit_ledger
                    (user_id, clerk_user_id, credit_balance_id, delta, balance_after, kind, reference)
                VALUES (NEW."userId", NEW."clerkUserId", NEW.id, change, NEW."creditsRemaining",
                        'external', 'CreditBalance ' || lower(TG_OP) || ' outside the service');
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER "pedro_webhooks_credit_ledger"
            AFTER INSERT OR UPDATE OF "creditsRemaining" ON "public"."CreditBalance"
            FOR EACH ROW EXECUTE FUNCTION "{schema}".credit_balance_record_external_change();
        """
    )
    op.create_table(
        "user_sync_state",
        sa.Column("clerk_user_id", sa.Text, primary_key=True),
        sa.Column("last_updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("deleted_at", postgresql.TIMESTAMP(timezone=True)),
        sa.Column(
            "updated_at",
            postgresql.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        schema=schema,
    )


def downgrade() -> None:
    schema = service_schema()
    op.drop_table("user_sync_state", schema=schema)
    op.execute('DROP TRIGGER "pedro_webhooks_credit_ledger" ON "public"."CreditBalance"')
    op.execute(f'DROP FUNCTION "{schema}".credit_balance_record_external_change()')
    op.drop_table("credit_ledger", schema=schema)
    op.execute(f'DROP FUNCTION "{schema}".credit_ledger_refuse_change()')
