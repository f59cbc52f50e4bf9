"""Credits an operator gives or takes (`pedro-webhooks credits grant|adjust`).

They go through `worker.credits.ledger.change_credits`, the one place a balance changes, as
`adjustment` entries whose reference carries who did it and why. The operator's `--key`
(without surrounding white space, as checked and stored) makes the change idempotent: the same
key applies once, and a key reused for another user or amount is refused rather than silently
ignored. An amount beyond the configured maximum is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.ledger import CreditLedgerEntry, LedgerKind
from worker.billing.accounts import find_account
from worker.credits.ledger import LedgerChange, change_credits

KEY_PREFIX = "support:"


class SupportCreditError(Exception):
    """The change cannot be made as asked; the message says why. Nothing was written."""


class AmountOutOfBounds(SupportCreditError):
    """--amount beyond SUPPORT_CREDITS_MAX_AMOUNT (either sign): most likely a typo."""


@dataclass(frozen=True)
class SupportChange:
    entry_id: int
    clerk_user_id: str
    delta: int
    balance_after: int
    reference: str
    applied_now: bool  # False: the key was used before, for this same change
    key: str  # the operator's key, as checked and stored


def ledger_key(operator_key: str) -> str:
    return KEY_PREFIX + operator_key


def normalised_key(key: str) -> str:
    """The operator's key as it is checked and stored: "t-1 " and "t-1" are one key."""
    normalised = key.strip()
    if not normalised:
        raise SupportCreditError("--key must not be empty")
    return normalised


def check_amount(amount: int, max_amount: int) -> None:
    if amount == 0:
        raise SupportCreditError("--amount must not be 0")
    if abs(amount) > max_amount:
        raise AmountOutOfBounds(
            f"--amount {amount} is beyond the most one change may move, {max_amount} credits either way "
            "(SUPPORT_CREDITS_MAX_AMOUNT): nothing changed"
        )


def change_support_credits(
    session: Session,
    *,
    clerk_user_id: str,
    amount: int,
    reason: str,
    key: str,
    operator: str,
    max_amount: int,
    allow_negative: bool = False,
) -> SupportChange:
    check_amount(amount, max_amount)
    key = normalised_key(key)
    if not reason.strip():
        raise SupportCreditError("--reason must not be empty")
    existing = session.scalar(select(CreditLedgerEntry).where(CreditLedgerEntry.idempotency_key == ledger_key(key)))
    if existing is not None:
        return _already_applied(existing, clerk_user_id, amount, key)
    account = find_account(session, clerk_user_id)
    if account is None or account.credit_balance_id is None:
        raise SupportCreditError(f"no user {clerk_user_id} with a credit balance")
    reference = f"{operator}: {reason.strip()}"
    change = _apply(session, account.credit_balance_id, amount, key, reference, allow_negative=allow_negative)
    if change is None:
        raise SupportCreditError(
            f"taking {-amount} credits would take {clerk_user_id} below zero (use --allow-negative to do it anyway)"
        )
    return SupportChange(
        change.entry_id, clerk_user_id, amount, change.balance_after, reference, applied_now=True, key=key
    )


def _apply(
    session: Session, credit_balance_id: str, amount: int, key: str, reference: str, *, allow_negative: bool
) -> LedgerChange | None:
    """Giving always applies. Taking never overdraws unless asked (a negative balance blocks the
    user's usage): with --allow-negative the change is marked so the database's overdraft guard
    lets it below zero; without, it stops at a floor of 0 (None: refused, nothing written)."""
    change = partial(
        change_credits,
        session,
        credit_balance_id,
        delta=amount,
        kind=LedgerKind.ADJUSTMENT,
        idempotency_key=ledger_key(key),
        reference=reference,
    )
    if amount > 0:
        return change()
    return change(may_go_negative=True) if allow_negative else change(floor=0)


def _already_applied(entry: CreditLedgerEntry, clerk_user_id: str, amount: int, key: str) -> SupportChange:
    if entry.clerk_user_id != clerk_user_id or entry.delta != amount:
        raise SupportCreditError(
            f"key {key!r} was used for {entry.delta:+d} credits to {entry.clerk_user_id} (entry {entry.id}): "
            "choose another key"
        )
    return SupportChange(
        entry.id, clerk_user_id, entry.delta, entry.balance_after, entry.reference or "", applied_now=False, key=key
    )
