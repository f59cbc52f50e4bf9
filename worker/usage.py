"""Usage debits and refunds: each one transaction on the caller's session, idempotent on its key.

A debit: claim the key in `usage_requests` (INSERT ... ON CONFLICT DO NOTHING: a concurrent
request with the same key waits on that row, then reads the first one's committed outcome), find
the user's balance, resolve the cost, take it with one conditional UPDATE (`change_credits` with
floor 0: never an overdraft), write the `UsageHistory` row, and store the answer on the key.

Answers are JSON: `{"status", "remaining", "usage_id"}` plus `"error"` for error results.
- `applied`, `insufficient_credits`, `unknown_user`, `unknown_debit`, `over_refund` are final
  and stored on the key; the same key again answers `duplicate` (with the stored `remaining`
  and `usage_id`, and the first answer's status as `original_status`); the same key with other
  arguments answers `conflict`.
- An inactive (deleted) user cannot spend: `insufficient_credits` with `"reason": "inactive_user"`.
- `error` results (unknown operation, invalid or unknown cost) are caller or configuration
  mistakes: nothing is stored, so the same key can be sent again once they are fixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import CreditBalance, OperationType, UsageHistory, User
from models.base import utcnow
from models.ids import cuid
from models.ledger import LedgerKind
from models.usage import UsageRequest
from worker.costs import UnknownCost, resolve_cost
from worker.errors import LedgerKeyConflict
from worker.ledger import change_credits

PENDING = "pending"


class NotYetKnown(Exception):
    """The user (or, for a refund, the debit) does not exist yet: the caller may wait for the
    webhook (or the debit task) to create it. The transaction must roll back."""


@dataclass(frozen=True)
class DebitRequest:
    clerk_user_id: str
    operation: str
    idempotency_key: str
    cost: int | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class RefundRequest:
    clerk_user_id: str
    idempotency_key: str
    refund_of: str
    credits: int | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class Account:
    user_id: str
    is_active: bool
    credit_balance_id: str
    credits_remaining: int


def answer(status: str, remaining: int | None = None, usage_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"status": status, "remaining": remaining, "usage_id": usage_id, **extra}


def error(code: str, detail: str) -> dict[str, Any]:
    return answer("error", error=code, detail=detail)


def debit(session: Session, request: DebitRequest, *, final: bool = True) -> dict[str, Any]:
    """Apply one debit. With `final=False` a missing user raises `NotYetKnown` (to retry)
    instead of answering `unknown_user`."""
    operation = _operation(request.operation)
    if operation is None:
        return error("unknown_operation", f"{request.operation!r} is not an OperationType")
    if request.cost is not None and not _is_amount(request.cost, minimum=0):
        return error("invalid_cost", "cost must be a non-negative integer")
    stored = claim_key(session, request.idempotency_key, "debit", request.clerk_user_id,
                       operation=operation.value, request=asdict(request))
    if stored is not None:
        same = (stored.kind, stored.clerk_user_id, stored.operation, stored.request.get("cost")) == (
            "debit", request.clerk_user_id, operation.value, request.cost)
        return repeat_answer(stored, same)
    account = find_account(session, request.clerk_user_id)
    if account is None:
        if not final:
            raise NotYetKnown(request.clerk_user_id)
        return finish(session, request.idempotency_key, answer("unknown_user"))
    if not account.is_active:
        refused = answer("insufficient_credits", account.credits_remaining, reason="inactive_user")
        return finish(session, request.idempotency_key, refused)
    try:
        cost = resolve_cost(session, request.clerk_user_id, operation, request.cost)
    except UnknownCost as exc:
        forget_key(session, request.idempotency_key)
        return error("unknown_cost", str(exc))
    return _take(session, request, account, operation, cost)


def _take(session: Session, request: DebitRequest, account: Account, operation: OperationType, cost: int) -> dict[str, Any]:
    change = change_credits(
        session, account.credit_balance_id, delta=-cost, kind=LedgerKind.USAGE,
        idempotency_key=f"usage:{request.idempotency_key}",
        reference=f"usage {operation.value} {request.idempotency_key}", floor=0,
    )
    if change is None:
        # Read after the refused UPDATE: it waited for any concurrent debit of this balance.
        remaining = session.scalar(
            select(CreditBalance.credits_remaining).where(CreditBalance.id == account.credit_balance_id))
        return finish(session, request.idempotency_key, answer("insufficient_credits", remaining))
    usage_id = add_usage_history(session, account.user_id, account.credit_balance_id, operation, cost,
                                 request.details)
    applied = answer("applied", change.balance_after, usage_id)
    return finish(session, request.idempotency_key, applied, credits=cost, usage_id=usage_id)


def refund(session: Session, request: RefundRequest, *, final: bool = True) -> dict[str, Any]:
    """Give back all (credits=None) or part of an earlier applied debit. With `final=False` a
    debit key not seen yet raises `NotYetKnown` (the debit may still be in the queue)."""
    if request.credits is not None and not _is_amount(request.credits, minimum=1):
        return error("invalid_credits", "credits must be a positive integer")
    stored = claim_key(session, request.idempotency_key, "refund", request.clerk_user_id,
                       refund_of=request.refund_of, request=asdict(request))
    if stored is not None:
        same = (stored.kind, stored.clerk_user_id, stored.refund_of, stored.request.get("credits")) == (
            "refund", request.clerk_user_id, request.refund_of, request.credits)
        return repeat_answer(stored, same)
    debited = _lock_debit(session, request)
    if debited is None:
        if not final:
            raise NotYetKnown(request.refund_of)
        return finish(session, request.idempotency_key, answer("unknown_debit"))
    refundable = (debited.credits or 0) - refunded_so_far(session, request.refund_of)
    credits = refundable if request.credits is None else request.credits
    if credits < 1 or credits > refundable:
        return finish(session, request.idempotency_key, answer("over_refund", refundable=refundable))
    return _give_back(session, request, debited, credits)


def _give_back(session: Session, request: RefundRequest, debited: UsageRequest, credits: int) -> dict[str, Any]:
    usage = session.get(UsageHistory, debited.usage_id)
    change = change_credits(
        session, usage.credit_balance_id, delta=credits, kind=LedgerKind.REFUND,
        idempotency_key=f"refund:{request.idempotency_key}",
        reference=f"refund of usage {request.refund_of}",
    )
    usage_id = add_usage_history(session, usage.user_id, usage.credit_balance_id, usage.operation_type,
                                 -credits, request.details)
    applied = answer("applied", change.balance_after, usage_id)
    return finish(session, request.idempotency_key, applied, credits=credits, usage_id=usage_id)


def _lock_debit(session: Session, request: RefundRequest) -> UsageRequest | None:
    """The debit being refunded, locked so that concurrent refunds of it run one at a time.

    A key that belongs to another user, or to a refund, is answered as if it did not exist."""
    debited = session.scalar(
        select(UsageRequest).where(UsageRequest.idempotency_key == request.refund_of).with_for_update()
    )
    if debited is None or debited.kind != "debit" or debited.clerk_user_id != request.clerk_user_id:
        return None
    return debited


def refunded_so_far(session: Session, debit_key: str) -> int:
    return session.scalar(
        select(func.coalesce(func.sum(UsageRequest.credits), 0)).where(
            UsageRequest.refund_of == debit_key, UsageRequest.kind == "refund", UsageRequest.status == "applied"
        )
    )


def outcome(session: Session, idempotency_key: str) -> dict[str, Any]:
    """The authoritative answer stored for a key, or status `unknown` if none was stored (never
    sent, still queued or retrying, or an `error` result, which is not stored)."""
    stored = session.scalar(
        select(UsageRequest).where(UsageRequest.idempotency_key == idempotency_key,
                                   UsageRequest.status != PENDING))
    if stored is None:
        return answer("unknown")
    return {**stored.result, "kind": stored.kind}


def claim_key(session: Session, key: str, kind: str, clerk_user_id: str, *, request: dict[str, Any],
              operation: str | None = None, refund_of: str | None = None) -> UsageRequest | None:
    """Insert the key as pending; None if this transaction now owns it, else the stored row."""
    claimed = session.execute(
        insert(UsageRequest)
        .values(idempotency_key=key, kind=kind, clerk_user_id=clerk_user_id, operation=operation,
                refund_of=refund_of, status=PENDING, request=request, result={"status": PENDING})
        .on_conflict_do_nothing(index_elements=[UsageRequest.idempotency_key])
        .returning(UsageRequest.idempotency_key)
    ).scalar_one_or_none()
    if claimed is not None:
        return None
    stored = session.scalar(
        select(UsageRequest).where(UsageRequest.idempotency_key == key).execution_options(populate_existing=True))
    if stored is None:
        # The conflicting row vanished between the two statements (its transaction forgot it):
        # retry the whole transaction.
        raise LedgerKeyConflict(key)
    return stored


def repeat_answer(stored: UsageRequest, same_request: bool) -> dict[str, Any]:
    if not same_request:
        return answer("conflict", error="idempotency key reused with other arguments")
    return {**stored.result, "status": "duplicate", "original_status": stored.result["status"]}


def finish(session: Session, key: str, result: dict[str, Any], *, credits: int | None = None,
           usage_id: str | None = None) -> dict[str, Any]:
    session.execute(
        update(UsageRequest)
        .where(UsageRequest.idempotency_key == key)
        .values(status=result["status"], result=result, credits=credits, usage_id=usage_id)
    )
    return result


def forget_key(session: Session, key: str) -> None:
    """Release a key claimed by this transaction for a request that stores no answer."""
    session.execute(delete(UsageRequest).where(UsageRequest.idempotency_key == key))


def find_account(session: Session, clerk_user_id: str) -> Account | None:
    row = session.execute(
        select(User.id, User.is_active, CreditBalance.id, CreditBalance.credits_remaining)
        .join(CreditBalance, CreditBalance.user_id == User.id)
        .where(User.clerk_id == clerk_user_id)
    ).one_or_none()
    return None if row is None else Account(*row)


def add_usage_history(session: Session, user_id: str, credit_balance_id: str, operation: OperationType,
                      credits: int, details: dict[str, Any] | None) -> str:
    """The row the Next.js app shows: `creditsUsed` > 0 for usage, < 0 for a refund."""
    usage_id = cuid()
    session.execute(
        insert(UsageHistory).values(
            id=usage_id, user_id=user_id, credit_balance_id=credit_balance_id,
            operation_type=operation, credits_used=credits, details=details, timestamp=utcnow(),
        )
    )
    return usage_id


def _operation(name: Any) -> OperationType | None:
    try:
        return OperationType(name)
    except ValueError:
        return None


def _is_amount(value: Any, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
