"""Inbox delivery state: `needs_attention`, when a row was last enqueued, runs that died.

- status `needs_attention`: a paid event that moved no money (no Plan matched, a short payment);
- `enqueued_at`: when the row's latest message was sent (or, for a retry, is due); the sweeper's
  index moves from `received_at` to it;
- `running_since` and `crashes`: a run in progress, and how many runs died mid-task (poison).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.helpers import service_schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_OLD_STATUSES = "('pending', 'processed', 'ignored', 'unmatched', 'failed')"
_NEW_STATUSES = "('pending', 'processed', 'ignored', 'unmatched', 'needs_attention', 'failed')"


def _status_check(schema: str, statuses: str) -> None:
    op.drop_constraint("webhook_inbox_status_check", "webhook_inbox", schema=schema, type_="check")
    op.create_check_constraint("webhook_inbox_status_check", "webhook_inbox", f"status IN {statuses}", schema=schema)


def upgrade() -> None:
    schema = service_schema()
    _status_check(schema, _NEW_STATUSES)
    timestamp = postgresql.TIMESTAMP(timezone=True)
    op.add_column(
        "webhook_inbox",
        sa.Column("enqueued_at", timestamp, server_default=sa.text("now()"), nullable=False),
        schema=schema,
    )
    # Rows already there were enqueued when they were received.
    op.execute(sa.text(f'UPDATE "{schema}".webhook_inbox SET enqueued_at = received_at'))
    op.add_column("webhook_inbox", sa.Column("running_since", timestamp), schema=schema)
    op.add_column(
        "webhook_inbox", sa.Column("crashes", sa.Integer, server_default=sa.text("0"), nullable=False), schema=schema
    )
    op.drop_index("webhook_inbox_pending_received_at_idx", "webhook_inbox", schema=schema)
    op.create_index(
        "webhook_inbox_pending_enqueued_at_idx",
        "webhook_inbox",
        ["enqueued_at"],
        schema=schema,
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    schema = service_schema()
    op.drop_index("webhook_inbox_pending_enqueued_at_idx", "webhook_inbox", schema=schema)
    op.create_index(
        "webhook_inbox_pending_received_at_idx",
        "webhook_inbox",
        ["received_at"],
        schema=schema,
        postgresql_where=sa.text("status = 'pending'"),
    )
    for column in ("crashes", "running_since", "enqueued_at"):
        op.drop_column("webhook_inbox", column, schema=schema)
    # The old schema has no such status: those rows were logged without effect, as `processed` was.
    op.execute(sa.text(f"UPDATE \"{schema}\".webhook_inbox SET status = 'processed' WHERE status = 'needs_attention'"))
    _status_check(schema, _OLD_STATUSES)
