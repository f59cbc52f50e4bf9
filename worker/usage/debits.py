"""Usage debits: one transaction on the caller's session, idempotent on its key, never an overdraft.

A debit claims its key (`worker.usage.requests`), finds the user's balance, resolves the cost,
takes it with one conditional UPDATE (`change_credits` with floor 0), writes the `UsageHistory`
row and stores the answer on the key: two statements on the hot path. `debit_many` applies a
batch's debits in one transaction, in an order that never deadlocks; `expire` stores the answer
of a debit whose message expired. The answers: docs/usage-api.md; the design: docs/design.md
("Debits").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Select, literal_column, select, true
from sqlalchemy.orm import Session

from models.app import CreditBalance, OperationType, User
from models.base import table_of
from models.ids import cuid
from models.ledger import LedgerKind
from models.usage import UsageRequest
from worker.credits.ledger import change_credits
from worker.plans.current_plan import current_plan_query
from worker.usage.costs import UnknownCost, resolve_cost
from worker.usage.requests import (
    CLAIM,
    NotYetKnown,
    answer,
    applied_answer,
    autoflush,
    claim_key,
    column_param,
    error,
    finish,
    forget_key,
    is_amount,
    repeat_answer,
    stored_request,
    usage_and_answer,
)

_requests = table_of(UsageRequest)
_users = table_of(User)
_balances = table_of(CreditBalance)


@dataclass(frozen=True)
class DebitRequest:
    clerk_user_id: str
    operation: str
    idempotency_key: str
    cost: int | None = None
    details: dict[str, Any] | None = None
    not_after: float | None = None  # Unix time (s) after which the caller no longer waits

    @classmethod
    def from_task_kwargs(cls, kwargs: dict[str, Any]) -> DebitRequest:
        """The debit a `usage.debit` message asks for (KeyError or TypeError if it is not one)."""
        return cls(
            kwargs["clerk_user_id"],
            kwargs["operation"],
            kwargs["idempotency_key"],
            kwargs.get("cost"),
            kwargs.get("details"),
            kwargs.get("not_after"),
        )

    def past_deadline(self) -> bool:
        return self.not_after is not None and time.time() > self.not_after


@dataclass(frozen=True)
class Account:
    is_active: bool
    credit_balance_id: str
    credits_remaining: int


def _claim_and_find_account() -> Select[str | None, str | None, bool | None, str | None, int | None, str | None]:
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
    claim = CLAIM.cte("claim")
    clerk_user_id = column_param(_requests.c.clerk_user_id)
    account = (
        select(
            _users.c.id.label("user_id"),
            _users.c.isActive.label("is_active"),
            _balances.c.id.label("credit_balance_id"),
            _balances.c.creditsRemaining.label("credits_remaining"),
        )
        .select_from(_users.join(_balances, _balances.c.userId == _users.c.id))
        .where(_users.c.clerkId == clerk_user_id)
        .subquery("account")
    )
    one = select(literal_column("1").label("one")).subquery("one")
    return select(
        select(claim.c.idempotency_key).scalar_subquery().label("claimed"),
        account.c.user_id,
        account.c.is_active,
        account.c.credit_balance_id,
        account.c.credits_remaining,
        current_plan_query(clerk_user_id).scalar_subquery().label("plan_id"),
    ).select_from(one.outerjoin(account, true()))


_CLAIM_AND_FIND_ACCOUNT = _claim_and_find_account()


_REMAINING = select(_balances.c.creditsRemaining).where(_balances.c.id == column_param(_balances.c.id))


def debit(session: Session, request: DebitRequest, *, final: bool = True) -> dict[str, Any]:
    """Apply one debit. With `final=False` a missing user raises `NotYetKnown` (to retry)
    instead of answering `unknown_user`."""
    operation = _operation(request.operation)
    if operation is None:
        return error("unknown_operation", f"{request.operation!r} is not an OperationType")
    if request.cost is not None and not is_amount(request.cost, minimum=0):
        return error("invalid_cost", "cost must be a non-negative integer")
    autoflush(session)
    found = session.execute(
        _CLAIM_AND_FIND_ACCOUNT,
        {
            "idempotency_key": request.idempotency_key,
            "kind": "debit",
            "clerk_user_id": request.clerk_user_id,
            "operation": operation.value,
            "refund_of": None,
            "request": asdict(request),
        },
    ).one()
    if found.claimed is None:
        return _repeat(session, request, operation.value)
    if request.past_deadline():
        # Checked once the key is ours, so a debit that did apply before answers `duplicate`.
        return finish(session, request.idempotency_key, answer("expired"))
    account = (
        None if found.user_id is None else Account(found.is_active, found.credit_balance_id, found.credits_remaining)
    )
    if account is None:
        if not final:
            # Nothing of this debit stays written (its claim is released), so a batch can go on
            # with the others and commit them while this one waits for its user on its own.
            forget_key(session, request.idempotency_key)
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


def debit_many(session: Session, requests: Sequence[tuple[DebitRequest, bool]]) -> list[dict[str, Any] | None]:
    """Apply each `(request, final)` as `debit` does, all on this session (one transaction), in
    arrival order for each user and users sorted by Clerk id. The answers come back in the
    order of `requests`; None for one whose user is not known yet (with final=False): nothing of
    it was written, and the caller retries it on its own."""
    answers: list[dict[str, Any] | None] = [None] * len(requests)
    # sorted() is stable: a user's debits keep their arrival order.
    for n in sorted(range(len(requests)), key=lambda n: requests[n][0].clerk_user_id):
        request, final = requests[n]
        try:
            answers[n] = debit(session, request, final=final)
        except NotYetKnown:
            answers[n] = None
    return answers


def expire(session: Session, request: DebitRequest) -> dict[str, Any]:
    """Store `expired` on the key of a debit that will never run (its message expired in the
    queue), unless the key already has an answer: then that answer stands."""
    autoflush(session)
    stored = claim_key(
        session,
        request.idempotency_key,
        "debit",
        request.clerk_user_id,
        operation=request.operation,
        request=asdict(request),
    )
    if stored is not None:
        return _repeat(session, request, request.operation)
    return finish(session, request.idempotency_key, answer("expired"))


def _repeat(session: Session, request: DebitRequest, operation: str) -> dict[str, Any]:
    stored = stored_request(session, request.idempotency_key)
    same = (stored.kind, stored.clerk_user_id, stored.operation, stored.request.get("cost")) == (
        "debit",
        request.clerk_user_id,
        operation,
        request.cost,
    )
    return repeat_answer(stored, same)


def _take(
    session: Session, request: DebitRequest, account: Account, operation: OperationType, cost: int
) -> dict[str, Any]:
    usage_id = cuid()
    change = change_credits(
        session,
        account.credit_balance_id,
        delta=-cost,
        kind=LedgerKind.USAGE,
        idempotency_key=f"usage:{request.idempotency_key}",
        reference=f"usage {operation.value} {request.idempotency_key}",
        floor=0,
        then=usage_and_answer(
            request.idempotency_key,
            usage_id,
            credits=cost,
            operation=operation,
            credits_used=cost,
            details=request.details,
        ),
    )
    if change is None:
        # Read after the refused UPDATE: it waited for any concurrent debit of this balance.
        remaining = session.scalar(_REMAINING, {"id": account.credit_balance_id})
        return finish(session, request.idempotency_key, answer("insufficient_credits", remaining))
    return applied_answer(usage_id, change.balance_after)


def _operation(name: Any) -> OperationType | None:
    try:
        return OperationType(name)
    except ValueError:
        return None
