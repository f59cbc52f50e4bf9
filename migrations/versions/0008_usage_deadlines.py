"""Usage requests keep their service, their message and their deadline; nothing commits after it.

`service` (refunds and outcomes only for the service's own keys), `task_id` (that message run
again gets its first answer back), `not_after`: a deferred constraint trigger checks PostgreSQL's
clock against it as the transaction commits (every answer is an UPDATE of the row its claim
inserted); past it the COMMIT fails (SQLSTATE PWD01) unless the answer is `expired`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.helpers import service_schema

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DEADLINE_SQLSTATE = "PWD01"


def upgrade() -> None:
    schema = service_schema()
    op.add_column("usage_requests", sa.Column("service", sa.Text), schema=schema)
    op.add_column("usage_requests", sa.Column("task_id", sa.Text), schema=schema)
    op.add_column("usage_requests", sa.Column("not_after", postgresql.TIMESTAMP(timezone=True)), schema=schema)
    op.execute(
        f"""
        CREATE FUNCTION "{schema}".usage_request_before_deadline() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Deferred: runs as the transaction commits, on the answer this UPDATE wrote.
            IF clock_timestamp() > NEW.not_after AND NEW.status <> 'expired' THEN
                RAISE EXCEPTION 'pedro_webhooks_deadline: usage request % answered % after its deadline %',
                    NEW.idempotency_key, NEW.status, NEW.not_after
                    USING ERRCODE = '{DEADLINE_SQLSTATE}';
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER usage_request_before_deadline
            AFTER UPDATE ON "{schema}".usage_requests
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW WHEN (NEW.not_after IS NOT NULL)
            EXECUTE FUNCTION "{schema}".usage_request_before_deadline();
        """
    )


def downgrade() -> None:
    schema = service_schema()
    op.execute(f'DROP TRIGGER usage_request_before_deadline ON "{schema}".usage_requests')
    op.execute(f'DROP FUNCTION "{schema}".usage_request_before_deadline()')
    op.drop_column("usage_requests", "not_after", schema=schema)
    op.drop_column("usage_requests", "task_id", schema=schema)
    op.drop_column("usage_requests", "service", schema=schema)
