"""Usage debits: one transaction on the caller's session, idempotent on its key, never an overdraft.

A debit claims its key (`worker.usage.requests`), finds the user's balance, resolves the cost,
takes it with one conditional UPDATE (`change_credits` with floor 0), writes the `UsageHistory`
row and stores the answer on the key: two statements on the hot path. `debit_many` applies a
batch's debits in one transaction, locking in an order that never deadlocks; `settle` gives a
debit whose caller stopped waiting its final answer. Deadlines are PostgreSQL's clock's.
The answers: docs/usage-api.md; the design: docs/design.md ("Debits").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Row, Select, func, literal_column, select, true
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
    claim_params,
    column_param,
    error,
    finish,
    forget_key,
    is_amount,
    repeat_answer,
    seconds_param,
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
    service: str | None = None  # the service that sent it
    task_id: str | None = None  # the message that carries it

    @classmethod
    def from_args(cls, args: dict[str, Any], service: str | None, task_id: str | None = None) -> DebitRequest:
        """The debit a `usage.debit` request asks for (KeyError or TypeError if it is not one)."""
        not_after = args.get("not_after")
        if not_after is not None and (isinstance(not_after, bool) or not isinstance(not_after, int | float)):
            raise TypeError("not_after must be a number of seconds")
        return cls(
            args["clerk_user_id"],
            args["operation"],
            args["idempotency_key"],
            args.get("cost"),
            args.get("details"),
            not_after,
            service,
            task_id,
        )

    def stored_arguments(self) -> dict[str, Any]:
        """What the key's row keeps of the request (`usage_requests.request`)."""
        arguments = asdict(self)
        del arguments["service"], arguments["task_id"]
        return arguments


@dataclass(frozen=True)
class Account:
    is_active: bool
    credit_balance_id: str
    credits_remaining: int


def _claim_and_find_account() -> Select[Any]:
    """The claim, PostgreSQL's verdict on the deadline, the user's account and current plan, in
    one statement:

        WITH claim AS (INSERT ... ON CONFLICT DO NOTHING RETURNING idempotency_key)
        SELECT (SELECT idempotency_key FROM claim), clock_timestamp() > to_timestamp(:not_after),
               account.*, (<current plan>)
        FROM (SELECT 1) AS one LEFT JOIN (<User JOIN CreditBalance>) AS account ON true

    One row always; `claimed` is NULL when the key was there already (its stored answer is read
    in a statement of its own, which sees the committed row). The balance itself is re-read by
    `change_credits`' UPDATE, which always sees the latest committed row."""
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
    past_deadline = func.clock_timestamp() > func.to_timestamp(seconds_param("not_after"))
    return select(
        select(claim.c.idempotency_key).scalar_subquery().label("claimed"),
        past_deadline.label("past_deadline"),
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
    (result,) = debit_many(session, [(request, final)])
    if result is None:
        raise NotYetKnown(request.clerk_user_id)
    return result


def debit_many(session: Session, requests: Sequence[tuple[DebitRequest, bool]]) -> list[dict[str, Any] | None]:
    """Apply each `(request, final)` as one debit alone would, all on this session (one
    transaction). Locks are taken in one order whatever the batch, so batches running at once
    never deadlock: first every key, claimed in key order; then the balances, users in Clerk id
    order, each user's debits in arrival order; a key met again answers last, from what is
    stored. The answers come back in the order of `requests`; None for one whose user is not
    known yet (with final=False): nothing of it was written, and the caller retries it alone."""
    answers: list[dict[str, Any] | None] = [None] * len(requests)
    earliest = min((request.not_after for request, _ in requests if request.not_after is not None), default=None)
    first: dict[str, int] = {}  # key -> the index of its first valid request
    again: list[int] = []
    for n, (request, _) in enumerate(requests):
        answers[n] = _invalid(request)
        if answers[n] is not None:
            continue
        if request.idempotency_key in first:
            again.append(n)
        else:
            first[request.idempotency_key] = n
    autoflush(session)
    found = {n: _claim(session, requests[n][0], earliest) for n in (first[key] for key in sorted(first))}
    waiting: set[str] = set()
    for n in sorted(found, key=lambda n: (requests[n][0].clerk_user_id, n)):
        request, final = requests[n]
        if found[n].claimed is None:
            again.append(n)
            continue
        try:
            answers[n] = _decide(session, request, final, found[n])
        except NotYetKnown:
            waiting.add(request.idempotency_key)
    for n in sorted(again):
        request = requests[n][0]
        if request.idempotency_key not in waiting:
            answers[n] = _repeat(session, request)
    return answers


def _invalid(request: DebitRequest) -> dict[str, Any] | None:
    """The `error` answer of a request that can never apply as sent (nothing is stored)."""
    if _operation(request.operation) is None:
        return error("unknown_operation", f"{request.operation!r} is not an OperationType")
    if request.cost is not None and not is_amount(request.cost, minimum=0):
        return error("invalid_cost", "cost must be a non-negative integer")
    return None


def _claim(session: Session, request: DebitRequest, earliest: float | None) -> Row[Any]:
    params = claim_params(
        request.idempotency_key,
        "debit",
        request.clerk_user_id,
        request=request.stored_arguments(),
        service=request.service,
        task_id=request.task_id,
        not_after=request.not_after,
        earliest_deadline=earliest,
        operation=request.operation,
    )
    return session.execute(_CLAIM_AND_FIND_ACCOUNT, params).one()


def _decide(session: Session, request: DebitRequest, final: bool, found: Row[Any]) -> dict[str, Any]:
    """What a debit whose key this transaction claimed answers (and takes)."""
    operation = OperationType(request.operation)
    if found.past_deadline:
        # Checked once the key is ours, so a debit that did apply before answers `duplicate`.
        return finish(session, request.idempotency_key, answer("expired"))
    if found.user_id is None:
        if not final:
            # Nothing of this debit stays written (its claim is released), so a batch can go on
            # with the others and commit them while this one waits for its user on its own.
            forget_key(session, request.idempotency_key)
            raise NotYetKnown(request.clerk_user_id)
        return finish(session, request.idempotency_key, answer("unknown_user"))
    account = Account(found.is_active, found.credit_balance_id, found.credits_remaining)
    if not account.is_active:
        refused = answer("insufficient_credits", account.credits_remaining, reason="inactive_user")
        return finish(session, request.idempotency_key, refused)
    try:
        cost = resolve_cost(session, request.clerk_user_id, operation, request.cost, plan_id=found.plan_id)
    except UnknownCost as exc:
        forget_key(session, request.idempotency_key)
        return error("unknown_cost", str(exc))
    return _take(session, request, account, operation, cost)


def settle(session: Session, request: DebitRequest) -> dict[str, Any] | None:
    """The final answer of a debit whose caller stopped waiting: what is stored for its key, or,
    once its deadline has passed by PostgreSQL's clock and nothing is stored, `expired`, stored
    now (the claim waits for any transaction still holding the key, which cannot commit past
    the deadline). None while the deadline has not passed yet (nothing written)."""
    autoflush(session)
    found = _claim(session, request, None)
    if found.claimed is None:
        stored = stored_request(session, request.idempotency_key)
        return repeat_answer(stored, _same(stored, request), request.task_id)
    if request.not_after is None or not found.past_deadline:
        forget_key(session, request.idempotency_key)
        return None
    return finish(session, request.idempotency_key, answer("expired"))


def _same(stored: UsageRequest, request: DebitRequest) -> bool:
    return (stored.kind, stored.clerk_user_id, stored.operation, stored.request.get("cost")) == (
        "debit",
        request.clerk_user_id,
        request.operation,
        request.cost,
    )


def _repeat(session: Session, request: DebitRequest) -> dict[str, Any]:
    stored = stored_request(session, request.idempotency_key)
    return repeat_answer(stored, _same(stored, request), request.task_id)


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
