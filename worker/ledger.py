"""The one place a `CreditBalance` changes: the balance and its ledger entry, in one transaction.

Every grant, reversal, debit and refund calls `change_credits`. It marks the transaction as the
service's own (so the database trigger on "CreditBalance", which records the Next.js app's direct
changes as `external` entries, does not count it twice), moves the balance with one conditional
UPDATE, and appends the ledger entry with the balance it left.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import CreditBalance, User
from models.base import utcnow
from models.ledger import CreditLedgerEntry, LedgerKind
from worker.errors import LedgerKeyConflict

LEDGER_WRITE_SETTING = "pedro_webhooks.ledger_write"  # read by the trigger (migration 0002)


@dataclass(frozen=True)
class LedgerChange:
    entry_id: int
    credit_balance_id: str
    delta: int
    balance_after: int


def change_credits(
    session: Session,
    credit_balance_id: str,
    *,
    delta: int,
    kind: LedgerKind,
    idempotency_key: str,
    reference: str,
    floor: int | None = None,
) -> LedgerChange | None:
    """Add `delta` (negative to take) to the balance and append its ledger entry.

    With `floor`, the change applies only if the balance stays at or above it (`floor=0`: never
    an overdraft) and None is returned otherwise; nothing is written then. The caller makes sure
    the balance exists and that this change was not applied before (its own idempotency check);
    the unique `idempotency_key` is the last guard: a concurrent duplicate raises
    `LedgerKeyConflict` and the transaction rolls back.
    """
    now = utcnow()
    # Marks the transaction as the service's within the same statement (an InitPlan, run once
    # before any row changes; set_config(..., true) lasts until the transaction ends), so the
    # trigger skips this change, at no extra round trip, and no savepoint rollback can separate
    # the mark from the write.
    mark = select(func.set_config(LEDGER_WRITE_SETTING, "on", True)).scalar_subquery()
    statement = (
        update(CreditBalance)
        .where(CreditBalance.id == credit_balance_id, mark == "on")
        .values(
            credits_remaining=CreditBalance.credits_remaining + delta,
            last_synced_at=now,
            updated_at=now,
        )
        .returning(CreditBalance.user_id, CreditBalance.clerk_user_id, CreditBalance.credits_remaining)
    )
    if floor is not None:
        statement = statement.where(CreditBalance.credits_remaining + delta >= floor)
    row = session.execute(statement).one_or_none()
    if row is None:
        return None
    entry_id = session.execute(
        insert(CreditLedgerEntry)
        .values(
            user_id=row.user_id,
            clerk_user_id=row.clerk_user_id,
            credit_balance_id=credit_balance_id,
            delta=delta,
            balance_after=row.credits_remaining,
            kind=kind.value,
            idempotency_key=idempotency_key,
            reference=reference,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(CreditLedgerEntry.id)
    ).scalar_one_or_none()
    if entry_id is None:
        raise LedgerKeyConflict(idempotency_key)
    return LedgerChange(entry_id, credit_balance_id, delta, row.credits_remaining)


def open_credit_balance(session: Session, user: User, credits: int, *, reference: str) -> LedgerChange:
    """Create the user's balance with its starting credits, as a `signup` ledger entry.

    The row is inserted empty (the trigger records nothing for a zero change) and then credited
    through `change_credits` like any other change.
    """
    balance = CreditBalance(user_id=user.id, clerk_user_id=user.clerk_id, credits_remaining=0)
    session.add(balance)
    session.flush()
    change = change_credits(
        session,
        balance.id,
        delta=credits,
        kind=LedgerKind.SIGNUP,
        idempotency_key=f"signup:{user.id}",
        reference=reference,
    )
    assert change is not None  # no floor: always applies
    return change


def ledger_sum(session: Session, user_id: str) -> int:
    """What the ledger says the user's balance is (the invariant's right-hand side)."""
    total = select(func.coalesce(func.sum(CreditLedgerEntry.delta), 0)).where(
        CreditLedgerEntry.user_id == user_id
    )
    return session.execute(total).scalar_one()

