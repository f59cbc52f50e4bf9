"""Usage debits: one transaction on the caller's session, idempotent on its key, never an overdraft.

A debit claims its key (`worker.usage.requests`), finds the user's balance, resolves the cost,
takes it with one conditional UPDATE (`change_credits` with floor 0), writes the `UsageHistory`
row and stores the answer on the key: two statements on the hot path. `debit_many` applies a
batch's debits in one transaction, locking in an order that never deadlocks; `settle` gives a
debit whose caller stopped waiting its final answer. Deadlines are PostgreSQL's clock's.
The answers: docs/usage-api.md; the design: docs/design.md ("Debits").
"""

from __future__ import annotations

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
from worker.usage.apply_many import apply_many
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

    # What `apply_many` calls (worker/usage/apply_many.py: `Claiming`).
    def invalid(self) -> dict[str, Any] | None:
        return _invalid(self)

    def claim(self, session: Session, earliest: float | None) -> Row[Any]:
        return claim_and_find_account(session, self, self.kind, earliest)

    def decide(self, session: Session, final: bool, found: Row[Any]) -> dict[str, Any]:
        return _decide(session, self, final, found)

    def repeat(self, session: Session) -> dict[str, Any]:
        return _repeat(session, self)

    kind = "debit"

    def same(self, stored: UsageRequest) -> bool:
        """Whether the key's stored request is this one (else a repeat is a `conflict`)."""
        return (stored.kind, stored.clerk_user_id, stored.operation, stored.request.get("cost")) == (
            "debit",
            self.clerk_user_id,
            self.operation,
            self.cost,
        )


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
        func.clock_timestamp().label("now"),
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
    instead of answering `unknown_user`. (A worker's batches: `apply_many`.)"""
    (result,) = apply_many(session, [(request, final)], lock_holds=no_holds)
    if result is None:
        raise NotYetKnown(request.clerk_user_id)
    return result


def no_holds(_session: Session, keys: list[str]) -> dict[str, Any]:
    """The hold locker of a batch without captures or releases."""
    assert not keys
    return {}


def _invalid(request: DebitRequest) -> dict[str, Any] | None:
    """The `error` answer of a request that can never apply as sent (nothing is stored)."""
    if operation_of(request.operation) is None:
        return error("unknown_operation", f"{request.operation!r} is not an OperationType")
    if request.cost is not None and not is_amount(request.cost, minimum=0):
        return error("invalid_cost", "cost must be a non-negative integer")
    return None


def claim_and_find_account(session: Session, request: Any, kind: str, earliest: float | None) -> Row[Any]:
    """Claim the key of a debit or a hold (`_CLAIM_AND_FIND_ACCOUNT`); `earliest`: the earliest
    deadline of the transaction's requests."""
    params = claim_params(
        request.idempotency_key,
        kind,
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
    spend = what_to_spend(session, request, final, found, request.cost)
    if isinstance(spend, dict):
        return spend
    return _take(session, request, *spend)


def what_to_spend(
    session: Session, request: Any, final: bool, found: Row[Any], explicit: int | None
) -> tuple[Account, OperationType, int] | dict[str, Any]:
    """For a debit or a hold whose key this transaction claimed: the account, operation and cost
    to take, or the answer that takes nothing (stored on the key): past the deadline, an unknown
    or inactive user, no cost. `explicit`: the credits the request names, else the configured cost."""
    operation = OperationType(request.operation)
    if found.past_deadline:
        # Checked once the key is ours, so a request that did apply before answers `duplicate`.
        return finish(session, request.idempotency_key, answer("expired"))
    if found.user_id is None:
        if not final:
            # Nothing of this request stays written (its claim is released), so a batch can go on
            # with the others and commit them while this one waits for its user on its own.
            forget_key(session, request.idempotency_key)
            raise NotYetKnown(request.clerk_user_id)
        return finish(session, request.idempotency_key, answer("unknown_user"))
    account = Account(found.is_active, found.credit_balance_id, found.credits_remaining)
    if not account.is_active:
        refused = answer("insufficient_credits", account.credits_remaining, reason="inactive_user")
        return finish(session, request.idempotency_key, refused)
    try:
        cost = resolve_cost(session, request.clerk_user_id, operation, explicit, plan_id=found.plan_id)
    except UnknownCost as exc:
        forget_key(session, request.idempotency_key)
        return error("unknown_cost", str(exc))
    return account, operation, cost


def refused_for_credits(session: Session, key: str, credit_balance_id: str) -> dict[str, Any]:
    """`insufficient_credits`, stored on the key, with the balance read after the refused UPDATE
    (which waited for any concurrent change of this balance)."""
    remaining = session.scalar(_REMAINING, {"id": credit_balance_id})
    return finish(session, key, answer("insufficient_credits", remaining))


def settle(session: Session, request: Any) -> dict[str, Any] | None:
    """The final answer of a debit (or a hold) whose caller stopped waiting: what is stored for
    its key, or, once its deadline has passed by PostgreSQL's clock and nothing is stored,
    `expired`, stored now (the claim waits for any transaction still holding the key, which
    cannot commit past the deadline). None while the deadline has not passed yet."""
    autoflush(session)
    found = claim_and_find_account(session, request, request.kind, None)
    if found.claimed is None:
        stored = stored_request(session, request.idempotency_key)
        return repeat_answer(stored, request.same(stored), request.task_id)
    if request.not_after is None or not found.past_deadline:
        forget_key(session, request.idempotency_key)
        return None
    return finish(session, request.idempotency_key, answer("expired"))


def _repeat(session: Session, request: Any) -> dict[str, Any]:
    stored = stored_request(session, request.idempotency_key)
    return repeat_answer(stored, request.same(stored), request.task_id)


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
        return refused_for_credits(session, request.idempotency_key, account.credit_balance_id)
    return applied_answer(usage_id, change.balance_after)


def operation_of(name: Any) -> OperationType | None:
    try:
        return OperationType(name)
    except ValueError:
        return None
