"""Usage debits and refunds: each one transaction on the caller's session, idempotent on its key.

A debit: claim the key in `usage_requests` (INSERT ... ON CONFLICT DO NOTHING: a concurrent
request with the same key waits on that row, then reads the first one's committed outcome), find
the user's balance, resolve the cost, take it with one conditional UPDATE (`change_credits` with
floor 0: never an overdraft), write the `UsageHistory` row, and store the answer on the key.

The hot path is three statements: the claim together with the account and its current plan (one
statement: a data-modifying CTE), `change_credits` (one statement), and the `UsageHistory` row
together with the stored answer (one statement). They are Core statements on the mapped tables,
built once at import with bound parameters: the compiled form is cached, nothing is rebuilt per
debit, and the engine's schema_translate_map still names the configured service schema.

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

from sqlalchemy import bindparam, delete, func, literal_column, select, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import CreditBalance, OperationType, UsageHistory, User
from models.base import utcnow
from models.ids import cuid
from models.ledger import LedgerKind
from models.usage import UsageRequest
from worker.costs import UnknownCost, resolve_cost
from worker.plans import current_plan_query
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


def _param(column, name: str | None = None):
    """A bound parameter typed as the column (so JSONB, enums... are converted as the ORM did)."""
    return bindparam(name or column.key, type_=column.type)


_requests = UsageRequest.__table__
_history = UsageHistory.__table__
_users = User.__table__
_balances = CreditBalance.__table__

# INSERT the key as pending; RETURNING it only if this transaction now owns it.
_CLAIM = (
    insert(_requests)
    .values({
        **{column: _param(column) for column in (
            _requests.c.idempotency_key, _requests.c.kind, _requests.c.clerk_user_id, _requests.c.operation,
            _requests.c.refund_of, _requests.c.request)},
        _requests.c.status: PENDING,
        _requests.c.result: {"status": PENDING},
    })
    .on_conflict_do_nothing(index_elements=[_requests.c.idempotency_key])
    .returning(_requests.c.idempotency_key)
)


def _claim_and_find_account():
    """The claim, the user's account and the user's current plan, in one statement:

        WITH claim AS (INSERT ... ON CONFLICT DO NOTHING RETURNING idempotency_key)
        SELECT (SELECT idempotency_key FROM claim), account.*, (<current plan>)
        FROM (SELECT 1) AS one LEFT JOIN (<User JOIN CreditBalance>) AS account ON true

    One row always; `claimed` is NULL when the key was there already (the rest is then unused:
    the stored answer is read in a statement of its own, which sees the committed row). The
    account and plan are read in the statement's snapshot, taken before the claim may wait on a
    concurrent insert of the same key; when that one rolls back and this debit owns the key, it
    reads them as of just before the wait, as if it had arrived a moment earlier. The balance
    itself is re-read by `change_credits`' UPDATE, which always sees the latest committed row."""
    claim = _CLAIM.cte("claim")
    clerk_user_id = _param(_requests.c.clerk_user_id)
    account = (
        select(_users.c.id.label("user_id"), _users.c.isActive.label("is_active"),
               _balances.c.id.label("credit_balance_id"), _balances.c.creditsRemaining.label("credits_remaining"))
        .select_from(_users.join(_balances, _balances.c.userId == _users.c.id))
        .where(_users.c.clerkId == clerk_user_id)
        .subquery("account")
    )
    one = select(literal_column("1").label("one")).subquery("one")
    return select(
        select(claim.c.idempotency_key).scalar_subquery().label("claimed"),
        account.c.user_id, account.c.is_active, account.c.credit_balance_id, account.c.credits_remaining,
        current_plan_query(clerk_user_id).scalar_subquery().label("plan_id"),
    ).select_from(one.outerjoin(account, true()))


_CLAIM_AND_FIND_ACCOUNT = _claim_and_find_account()

_FINISH_VALUES = {
    column: _param(column) for column in (
        _requests.c.status, _requests.c.result, _requests.c.credits, _requests.c.usage_id)
}
# The key's parameter is named "key": a column's own name is reserved for its SET value.
_FINISH = update(_requests).where(_requests.c.idempotency_key == _param(_requests.c.idempotency_key, "key")).values(
    _FINISH_VALUES)

# The `UsageHistory` row and the stored answer that names it, in one statement.
_ADD_USAGE = insert(_history).values({
    _history.c.id: _param(_history.c.id, "usage_id"),
    **{column: _param(column) for column in (
        _history.c.userId, _history.c.creditBalanceId, _history.c.operationType, _history.c.creditsUsed,
        _history.c.details, _history.c.timestamp)},
})
_FINISH_WITH_USAGE = _FINISH.add_cte(_ADD_USAGE.cte("usage"))

_FORGET = delete(_requests).where(_requests.c.idempotency_key == _param(_requests.c.idempotency_key, "key"))
_REMAINING = select(_balances.c.creditsRemaining).where(_balances.c.id == _param(_balances.c.id))


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
    _autoflush(session)
    found = session.execute(_CLAIM_AND_FIND_ACCOUNT, {
        "idempotency_key": request.idempotency_key, "kind": "debit", "clerk_user_id": request.clerk_user_id,
        "operation": operation.value, "refund_of": None, "request": asdict(request),
    }).one()
    if found.claimed is None:
        stored = stored_request(session, request.idempotency_key)
        same = (stored.kind, stored.clerk_user_id, stored.operation, stored.request.get("cost")) == (
            "debit", request.clerk_user_id, operation.value, request.cost)
        return repeat_answer(stored, same)
    account = None if found.user_id is None else Account(
        found.user_id, found.is_active, found.credit_balance_id, found.credits_remaining)
    if account is None:
        if not final:
            raise NotYetKnown(request.clerk_user_id)
        return finish(session, request.idempotency_key, answer("unknown_user"))
    if not account.is_active:
        refused = answer("insufficient_credits", account.credits_remaining, reason="inactive_user")
        return finish(session, request.idempotency_key, refused)
    try:
        cost = resolve_cost(session, request.clerk_user_id, operation, request.cost, plan_id=found.plan_id)
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
        remaining = session.scalar(_REMAINING, {"id": account.credit_balance_id})
        return finish(session, request.idempotency_key, answer("insufficient_credits", remaining))
    return finish_applied(session, request.idempotency_key, change.balance_after, credits=cost,
                          user_id=account.user_id, credit_balance_id=account.credit_balance_id,
                          operation=operation, credits_used=cost, details=request.details)


def refund(session: Session, request: RefundRequest, *, final: bool = True) -> dict[str, Any]:
    """Give back all (credits=None) or part of an earlier applied debit. With `final=False` a
    debit key not seen yet raises `NotYetKnown` (the debit may still be in the queue)."""
    if request.credits is not None and not _is_amount(request.credits, minimum=1):
        return error("invalid_credits", "credits must be a positive integer")
    _autoflush(session)
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
    return finish_applied(session, request.idempotency_key, change.balance_after, credits=credits,
                          user_id=usage.user_id, credit_balance_id=usage.credit_balance_id,
                          operation=usage.operation_type, credits_used=-credits, details=request.details)


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
    claimed = session.execute(_CLAIM, {
        "idempotency_key": key, "kind": kind, "clerk_user_id": clerk_user_id, "operation": operation,
        "refund_of": refund_of, "request": request,
    }).scalar_one_or_none()
    if claimed is not None:
        return None
    return stored_request(session, key)


def stored_request(session: Session, key: str) -> UsageRequest:
    """The row of a key this transaction could not claim: read in a statement of its own, after
    the claim waited for the transaction that inserted it, so it sees that one's committed row."""
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


def finish(session: Session, key: str, result: dict[str, Any]) -> dict[str, Any]:
    """Store a final answer that applied nothing on the key this transaction claimed."""
    session.execute(_FINISH, {"key": key, "status": result["status"], "result": result,
                              "credits": None, "usage_id": None})
    return result


def finish_applied(session: Session, key: str, remaining: int, *, credits: int, user_id: str,
                   credit_balance_id: str, operation: OperationType, credits_used: int,
                   details: dict[str, Any] | None) -> dict[str, Any]:
    """Write the `UsageHistory` row the Next.js app shows (`creditsUsed` > 0 for usage, < 0 for a
    refund) and store the `applied` answer naming it on the key, in one statement."""
    usage_id = cuid()
    applied = answer("applied", remaining, usage_id)
    session.execute(_FINISH_WITH_USAGE, {
        "key": key, "status": applied["status"], "result": applied, "credits": credits,
        "usage_id": usage_id, "userId": user_id, "creditBalanceId": credit_balance_id,
        "operationType": operation, "creditsUsed": credits_used, "details": details, "timestamp": utcnow(),
    })
    return applied


def forget_key(session: Session, key: str) -> None:
    """Release a key claimed by this transaction for a request that stores no answer."""
    session.execute(_FORGET, {"key": key})


def _autoflush(session: Session) -> None:
    """What an ORM statement's autoflush did before these Core statements: pending changes first."""
    if session.autoflush:
        session.flush()


def _operation(name: Any) -> OperationType | None:
    try:
        return OperationType(name)
    except ValueError:
        return None


def _is_amount(value: Any, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
