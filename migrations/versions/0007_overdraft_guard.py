"""The overdraft guard: a BEFORE UPDATE trigger on "CreditBalance" (function in the service
schema: no Prisma drift) refuses lowering "creditsRemaining" below zero, SQLSTATE 23514
(check_violation, as the CHECK a Prisma table cannot get would), message prefixed with the
guard's name; only transactions marked MAY_GO_NEGATIVE_SETTING = 'on' (the service's reversals,
change_credits(..., may_go_negative=True)) pass.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from migrations.helpers import service_schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen here as the trigger reads them (worker.credits.ledger and models.ledger name them too).
GUARD = "pedro_webhooks_no_overdraft"
MAY_GO_NEGATIVE_SETTING = "pedro_webhooks.may_go_negative"


def upgrade() -> None:
    schema = service_schema()
    # The WHEN clause keeps every other UPDATE (increments, decrements that stay >= 0, the
    # service's debits, which have a floor of 0) from calling the function at all.
    op.execute(
        f"""
        CREATE FUNCTION "{schema}".credit_balance_refuse_overdraft() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('{MAY_GO_NEGATIVE_SETTING}', true) = 'on' THEN
                RETURN NEW;  -- a reversal of a grant, or an operator's --allow-negative
            END IF;
            RAISE EXCEPTION '{GUARD}: refused to take "CreditBalance" % from % to % credits (below zero)',
                    OLD.id, OLD."creditsRemaining", NEW."creditsRemaining"
                USING ERRCODE = 'check_violation',
                      HINT = 'spend credits through the service''s usage.debit, which never overdraws';
        END $$;
        CREATE TRIGGER "{GUARD}"
            BEFORE UPDATE ON "public"."CreditBalance"
            FOR EACH ROW
            WHEN (NEW."creditsRemaining" < 0 AND NEW."creditsRemaining" < OLD."creditsRemaining")
            EXECUTE FUNCTION "{schema}".credit_balance_refuse_overdraft();
        """
    )


def downgrade() -> None:
    schema = service_schema()
    op.execute(f'DROP TRIGGER "{GUARD}" ON "public"."CreditBalance"')
    op.execute(f'DROP FUNCTION "{schema}".credit_balance_refuse_overdraft()')
