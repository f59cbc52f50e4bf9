"""The operator's console: the audit log (append-only: who, when, what, from where), and the
indexes its pages need. The inbox by status, type, arrival time and the user a payload names
(GIN over `models.inbox.payload_names()`, fastupdate off: see there); the ledger by user and by
balance. Not built CONCURRENTLY (that needs autocommit): on a large inbox, run it off-peak.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.helpers import service_schema

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# models.inbox.payload_names(), as written when this revision was (a revision never changes).
_PAYLOAD_NAMES = """ARRAY[
    payload #>> '{data,id}',
    payload #>> '{data,payer,user_id}',
    split_part(payload #>> '{payment,externalReference}', '|', 1),
    split_part(payload #>> '{subscription,externalReference}', '|', 1),
    split_part(payload #>> '{checkout,externalReference}', '|', 1),
    payload #>> '{payment,customer}',
    payload #>> '{payment,subscription}',
    payload #>> '{subscription,id}',
    payload #>> '{subscription,customer}',
    payload #>> '{checkout,customer}'
]"""


def upgrade() -> None:
    schema = service_schema()
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("details", postgresql.JSONB, nullable=False),
        sa.CheckConstraint("channel IN ('console', 'cli')", name="audit_log_channel_check"),
        schema=schema,
    )
    op.create_index("audit_log_at_idx", "audit_log", ["at"], schema=schema)
    op.execute(
        f"""
        CREATE FUNCTION "{schema}".audit_log_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
                USING ERRCODE = 'restrict_violation';
        END $$;
        CREATE TRIGGER audit_log_append_only
            BEFORE UPDATE OR DELETE ON "{schema}".audit_log
            FOR EACH ROW EXECUTE FUNCTION "{schema}".audit_log_refuse_change();
        """
    )
    op.create_index(
        "webhook_inbox_status_id_idx",
        "webhook_inbox",
        ["status", "id"],
        schema=schema,
        # Not pending nor unmatched rows: they have their own indexes, which the sweeper's and the
        # replay's statements rely on (an index over them too would compete in their plans).
        postgresql_where=sa.text("status IN ('ignored', 'needs_attention', 'failed')"),
    )
    op.create_index("webhook_inbox_event_type_id_idx", "webhook_inbox", ["event_type", "id"], schema=schema)
    op.create_index("webhook_inbox_received_at_idx", "webhook_inbox", ["received_at"], schema=schema)
    op.create_index("credit_ledger_clerk_user_id_idx", "credit_ledger", ["clerk_user_id", "id"], schema=schema)
    op.create_index("credit_ledger_credit_balance_id_idx", "credit_ledger", ["credit_balance_id"], schema=schema)
    op.execute(
        f'CREATE INDEX webhook_inbox_payload_names_idx ON "{schema}".webhook_inbox '
        f"USING gin (({_PAYLOAD_NAMES})) WITH (fastupdate = off)"
    )


def downgrade() -> None:
    schema = service_schema()
    for index in (
        "webhook_inbox_payload_names_idx",
        "webhook_inbox_received_at_idx",
        "webhook_inbox_event_type_id_idx",
        "webhook_inbox_status_id_idx",
    ):
        op.drop_index(index, table_name="webhook_inbox", schema=schema)
    op.drop_index("credit_ledger_credit_balance_id_idx", table_name="credit_ledger", schema=schema)
    op.drop_index("credit_ledger_clerk_user_id_idx", table_name="credit_ledger", schema=schema)
    op.drop_table("audit_log", schema=schema)
    op.execute(f'DROP FUNCTION "{schema}".audit_log_refuse_change()')
