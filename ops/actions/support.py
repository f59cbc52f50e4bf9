"""Support credits (`credits grant|adjust`, the console's user page), with the audit entry.

The change and its entry commit together. A refused change (`SupportCreditError`) writes
nothing; a key used before for the same change is recorded as "already applied".
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from ops.audit import Actor, record
from ops.support_credits import SupportChange, SupportCreditError, change_support_credits
from worker.errors import LedgerKeyConflict


@dataclass(frozen=True)
class SupportRequest:
    clerk_user_id: str
    amount: int
    reason: str
    key: str
    allow_negative: bool = False

    @property
    def action(self) -> str:
        # A grant only gives; anything that may take is an adjustment (the CLI's two commands).
        return "credits.grant" if self.amount > 0 and not self.allow_negative else "credits.adjust"


class KeyBusy(SupportCreditError):
    """Another change with the same key is being written right now."""


def change_credits(
    sessions: sessionmaker[Session],
    actor: Actor,
    request: SupportRequest,
    *,
    max_amount: int,
    action: str | None = None,
) -> SupportChange:
    """Apply the change once per key. Raises SupportCreditError (nothing written)."""
    for _ in range(2):  # a concurrent run with the same key: the second pass finds its entry
        try:
            with sessions.begin() as session:
                change = change_support_credits(
                    session,
                    clerk_user_id=request.clerk_user_id,
                    amount=request.amount,
                    reason=request.reason,
                    key=request.key,
                    operator=actor.name,
                    max_amount=max_amount,
                    allow_negative=request.allow_negative,
                )
                _record(session, actor, action or request.action, request, change)
            return change
        except LedgerKeyConflict:
            continue
    raise KeyBusy(f"key {request.key!r} is being used by another change right now: try again")


def _record(session: Session, actor: Actor, action: str, request: SupportRequest, change: SupportChange) -> None:
    outcome = (
        f"{change.delta:+d} credits, balance {change.balance_after} (ledger entry {change.entry_id})"
        if change.applied_now
        else f"already applied with key {change.key!r} (ledger entry {change.entry_id}): nothing changed"
    )
    details = {
        "amount": request.amount,
        "reason": request.reason,
        "key": change.key,
        "allow_negative": request.allow_negative,
        "ledger_entry_id": change.entry_id,
        "applied_now": change.applied_now,
    }
    record(session, actor, action, target=f"user {request.clerk_user_id}", outcome=outcome, details=details)
