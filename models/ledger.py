"""The append-only credit ledger: one row per change of a `CreditBalance`.

Per user, `"CreditBalance"."creditsRemaining" == sum(delta)` always holds: the service writes
its changes through `worker.credits.ledger.change_credits`, and a trigger on `"CreditBalance"`
records every other change (the Next.js app writing through Prisma) as an `external` entry. The
database refuses UPDATE and DELETE on this table, and any UPDATE that takes a balance below zero
(`OVERDRAFT_GUARD`) unless the service marked its transaction (`MAY_GO_NEGATIVE_SETTING`).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, Text, text
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import Mapped, mapped_column

from models.base import SERVICE_SCHEMA, Base

# The trigger of migration 0007: its name, the prefix of its error message (SQLSTATE 23514), and
# the transaction-local setting that lets a change through (the service's reversals only).
OVERDRAFT_GUARD = "pedro_webhooks_no_overdraft"
OVERDRAFT_SQLSTATE = "23514"  # check_violation
MAY_GO_NEGATIVE_SETTING = "pedro_webhooks.may_go_negative"


class LedgerKind(enum.StrEnum):
    SIGNUP = "signup"
    GRANT = "grant"
    REVERSAL = "reversal"
    USAGE = "usage"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    EXTERNAL = "external"  # written by the trigger: a change the service did not make
    HOLD = "hold"  # credits held for a job whose cost is known later (a credit hold)
    RELEASE = "release"  # held credits given back: what a capture did not use, a release, an expiry


class CreditLedgerEntry(Base):
    __tablename__ = "credit_ledger"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('signup', 'grant', 'reversal', 'usage', 'refund', 'adjustment', 'external', 'hold', 'release')",
            name="credit_ledger_kind_check",
        ),
        # Every entry the service writes has a key; only trigger-written `external` ones lack it.
        CheckConstraint(
            "idempotency_key IS NOT NULL OR kind = 'external'",
            name="credit_ledger_key_check",
        ),
        Index("credit_ledger_idempotency_key_key", "idempotency_key", unique=True),
        Index("credit_ledger_user_id_idx", "user_id"),
        # One user's ledger (`user show`, the console's user page: the page, its running sum, the
        # chart) and one balance's sum, without reading the whole ledger (migration 0010).
        Index("credit_ledger_clerk_user_id_idx", "clerk_user_id", "id"),
        Index("credit_ledger_credit_balance_id_idx", "credit_balance_id"),
        {"schema": SERVICE_SCHEMA},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    # No foreign keys into `public`: the app may delete users, and the ledger keeps their history.
    user_id: Mapped[str] = mapped_column(Text)
    clerk_user_id: Mapped[str] = mapped_column(Text)
    credit_balance_id: Mapped[str] = mapped_column(Text)
    delta: Mapped[int]
    balance_after: Mapped[int]
    kind: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)  # what caused it: a payment, a debit key...
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
