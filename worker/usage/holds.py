"""Credit holds (TigerBeetle's pending transfers): `hold` takes credits from a balance at once
(ledger kind `hold`), a capture books what the work cost (one `UsageHistory` row) and gives the
rest back (kind `release`), a release gives it all back, and a hold not captured by its
`expires_at` (PostgreSQL's clock) is released as `expired`. A hold leaves `open` once, under its
row lock: exactly one of capture, release and expiry wins; the others answer what happened.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, Text, bindparam, exists, func, insert, select, update
from sqlalchemy.orm import Session

from models.app import CreditBalance, UsageHistory
from models.base import constant, table_of, utcnow
from models.ids import cuid
from models.ledger import LedgerKind
from models.usage import CreditHold, HoldState, UsageRequest
from worker.credits.ledger import FollowUp, Then, change_credits, follow_up
from worker.usage.debits import claim_and_find_account, operation_of, refused_for_credits, settle, what_to_spend
from worker.usage.requests import (
    NotYetKnown,
    answer,
    answered_if_moved,
    column_param,
    error,
    forget_key,
    is_amount,
    repeat_answer,
    stored_request,
)

_holds = table_of(CreditHold)
_history = table_of(UsageHistory)

# How long a hold lasts when its request names no `expires_in`; the longest: HOLD_MAX_SECONDS.
DEFAULT_EXPIRES_IN = 900.0


@dataclass(frozen=True)
class HoldRequest:
    clerk_user_id: str
    operation: str
    idempotency_key: str
    credits: int | None = None  # None: the operation's cost
    expires_in: float = DEFAULT_EXPIRES_IN
    not_after: float | None = None  # the caller's deadline, as a debit's
    service: str | None = None
    task_id: str | None = None
    max_expires_in: float = 24 * 3600.0

    kind = "hold"

    @classmethod
    def from_args(
        cls, args: dict[str, Any], service: str | None, task_id: str | None, max_expires_in: float
    ) -> HoldRequest:
        """The hold a `usage.hold` request asks for (KeyError or TypeError if it is not one)."""
        expires_in = args.get("expires_in")
        return cls(
            args["clerk_user_id"],
            args["operation"],
            args["idempotency_key"],
            args.get("credits"),
            DEFAULT_EXPIRES_IN if expires_in is None else expires_in,
            args.get("not_after"),
            service,
            task_id,
            max_expires_in,
        )

    def invalid(self) -> dict[str, Any] | None:
        if operation_of(self.operation) is None:
            return error("unknown_operation", f"{self.operation!r} is not an OperationType")
        if self.credits is not None and not is_amount(self.credits, minimum=1):
            return error("invalid_credits", "credits must be a positive integer")
        if not _seconds(self.expires_in) or not 0 < self.expires_in <= self.max_expires_in:
            return error("invalid_expires_in", f"expires_in must be more than 0 and at most {self.max_expires_in:g} s")
        return None

    def claim(self, session: Session, earliest: float | None) -> Row[Any]:
        return claim_and_find_account(session, self, self.kind, earliest)

    def decide(self, session: Session, final: bool, found: Row[Any]) -> dict[str, Any]:
        spend = what_to_spend(session, self, final, found, self.credits)
        if isinstance(spend, dict):
            return spend
        account, operation, credits = spend
        if credits < 1:
            forget_key(session, self.idempotency_key)
            return error("invalid_credits", f"{operation.value} costs nothing: there is nothing to hold")
        expires_at = found.now + timedelta(seconds=self.expires_in)
        change = change_credits(
            session,
            account.credit_balance_id,
            delta=-credits,
            kind=LedgerKind.HOLD,
            idempotency_key=f"hold:{self.idempotency_key}",
            reference=f"hold {operation.value} {self.idempotency_key}",
            floor=0,
            then=self._writes(operation.value, credits, expires_at),
        )
        if change is None:
            return refused_for_credits(session, self.idempotency_key, account.credit_balance_id)
        return _held(credits, expires_at, change.balance_after)

    def _writes(self, operation: str, credits: int, expires_at: datetime) -> Then:
        return Then(
            _HOLD_WRITES,
            {
                "key": self.idempotency_key,
                "hold_key": self.idempotency_key,
                "hold_service": self.service,
                "hold_operation": operation,
                "hold_credits": credits,
                "hold_expires_at": expires_at,
                "applied_answer": _held(credits, expires_at, None),
                "applied_credits": credits,
            },
        )

    def repeat(self, session: Session) -> dict[str, Any]:
        stored = stored_request(session, self.idempotency_key)
        return repeat_answer(stored, self.same(stored), self.task_id)

    def same(self, stored: UsageRequest) -> bool:
        return (stored.kind, stored.clerk_user_id, stored.operation, stored.request.get("credits")) == (
            "hold",
            self.clerk_user_id,
            self.operation,
            self.credits,
        )

    def stored_arguments(self) -> dict[str, Any]:
        arguments = asdict(self)
        for local in ("service", "task_id", "max_expires_in"):
            del arguments[local]
        return arguments


def _held(credits: int, expires_at: datetime, remaining: int | None) -> dict[str, Any]:
    expires = expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return answer("held", remaining, None, credits=credits, expires_at=expires)


def _hold_writes(moved: Any) -> list[Any]:
    """The hold's row and its key's answer, in the statement that takes its credits:

    held AS (INSERT INTO credit_holds (...) SELECT :hold_key, ..., moved."userId" FROM moved),
    answered AS (UPDATE usage_requests SET status = 'held', ... WHERE ... EXISTS (moved))"""
    held = (
        insert(_holds)
        .from_select(
            [
                "hold_key",
                "service",
                "clerk_user_id",
                "user_id",
                "credit_balance_id",
                "operation",
                "credits",
                "expires_at",
                "state",
            ],
            select(
                column_param(_holds.c.hold_key),
                column_param(_holds.c.service, "hold_service"),
                moved.c.clerkUserId,
                moved.c.userId,
                column_param(_holds.c.credit_balance_id),
                column_param(_holds.c.operation, "hold_operation"),
                column_param(_holds.c.credits, "hold_credits"),
                column_param(_holds.c.expires_at, "hold_expires_at"),
                _state(HoldState.OPEN),
            ),
        )
        .cte("held")
    )
    return [held, answered_if_moved(moved, "held")]


def _state(state: HoldState) -> Any:
    return constant(state.value)


_HOLD_WRITES = follow_up(_hold_writes)


@dataclass(frozen=True)
class CaptureRequest:
    hold_key: str
    credits: int
    details: dict[str, Any] | None = None
    service: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any], service: str | None) -> CaptureRequest:
        return cls(args["idempotency_key"], args["credits"], args.get("details"), service)

    def invalid(self) -> dict[str, Any] | None:
        if not is_amount(self.credits, minimum=0):
            return error("invalid_credits", "credits must be a non-negative integer")
        return None

    def decide(self, session: Session, final: bool, locked: LockedHold | None) -> dict[str, Any]:
        hold = _open_hold(session, self.hold_key, self.service, final, locked)
        if isinstance(hold, dict):
            return hold
        if self.credits > hold.credits:
            return answer("over_capture", held=hold.credits)  # nothing changes: the hold stays open
        rest = hold.credits - self.credits
        usage_id = cuid()
        ending = _Ending(HoldState.CAPTURED, {"credits": self.credits, "released": rest}, self.credits, usage_id)
        return _end(
            session,
            hold,
            ending,
            rest,
            f"hold {hold.hold_key} captured {self.credits}: the rest released",
            usage=self.details,
        )


@dataclass(frozen=True)
class ReleaseRequest:
    hold_key: str
    service: str | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any], service: str | None) -> ReleaseRequest:
        key = args["idempotency_key"]
        if not isinstance(key, str):
            raise TypeError("idempotency_key must be a string")
        return cls(key, service)

    def invalid(self) -> dict[str, Any] | None:
        return None

    def decide(self, session: Session, final: bool, locked: LockedHold | None) -> dict[str, Any]:
        hold = _open_hold(session, self.hold_key, self.service, final, locked)
        if isinstance(hold, dict):
            return hold
        ending = _Ending(HoldState.RELEASED, {"released": hold.credits})
        return _end(session, hold, ending, hold.credits, f"hold {hold.hold_key} released")


@dataclass
class LockedHold:
    """A hold's row as read under its lock, and whether PostgreSQL's clock had passed its
    `expires_at` then. An ending in the batch updates `state` and `end_answer` here too, so a
    second request ending the same hold in that batch answers what the first did."""

    hold_key: str
    service: str | None
    clerk_user_id: str
    user_id: str
    credit_balance_id: str
    operation: str
    credits: int
    state: str
    end_answer: dict[str, Any] | None
    past: bool


_LOCKED_COLUMNS = [
    _holds.c.hold_key,
    _holds.c.service,
    _holds.c.clerk_user_id,
    _holds.c.user_id,
    _holds.c.credit_balance_id,
    _holds.c.operation,
    _holds.c.credits,
    _holds.c.state,
    _holds.c.end_answer,
    (func.clock_timestamp() > _holds.c.expires_at).label("past"),
]


def lock_holds(session: Session, keys: list[str]) -> dict[str, LockedHold]:
    """Lock and read the holds of these keys in key order, in one statement: {key: its hold}."""
    if not keys:
        return {}
    rows = session.execute(
        select(*_LOCKED_COLUMNS).where(_holds.c.hold_key.in_(keys)).order_by(_holds.c.hold_key).with_for_update()
    )
    return {row.hold_key: LockedHold(*row) for row in rows}


def expire(session: Session, hold: LockedHold) -> dict[str, Any]:
    """Release an open hold past its `expires_at` (its row locked): all of it comes back."""
    ending = _Ending(HoldState.EXPIRED, {"released": hold.credits})
    return _end(session, hold, ending, hold.credits, f"hold {hold.hold_key} expired")


def expire_due(session: Session, limit: int = 100) -> list[str]:
    """Expire up to `limit` open holds past their `expires_at`, skipping any a capture or release
    holds locked now (it decides; a later sweep finds what is still open). Their keys."""
    due = session.execute(
        select(*_LOCKED_COLUMNS)
        .where(_holds.c.state == HoldState.OPEN.value, _holds.c.expires_at < func.clock_timestamp())
        .order_by(_holds.c.hold_key)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for row in due:
        expire(session, LockedHold(*row))
    return [row.hold_key for row in due]


def settle_hold(session: Session, request: HoldRequest) -> dict[str, Any] | None:
    """A hold whose caller stopped waiting: as a debit (`debits.settle`)."""
    return settle(session, request)


def _open_hold(
    session: Session, key: str, service: str | None, final: bool, hold: LockedHold | None
) -> LockedHold | dict[str, Any]:
    """The hold of `key` (locked by `lock_holds`) if it is still open, or the answer that ends a
    capture or release here: `unknown_hold` (with final=False: NotYetKnown, the hold may still
    be queued), how the hold ended, or `expired` (it expires now if its time passed)."""
    if hold is None or (hold.service is not None and hold.service != service):
        if not final:
            raise NotYetKnown(key)
        return answer("unknown_hold")
    if hold.state != HoldState.OPEN:
        return dict(hold.end_answer or {})
    if hold.past:
        return expire(session, hold)
    return hold


@dataclass(frozen=True)
class _Ending:
    """How a hold ends: its new state, what its answer adds, and for a capture what it booked."""

    state: HoldState
    extra: dict[str, Any]
    captured: int | None = None
    usage_id: str | None = None


def _end(
    session: Session,
    hold: LockedHold,
    ending: _Ending,
    give_back: int,
    reference: str,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """End an open hold in one statement: give back `give_back` credits (ledger kind `release`),
    book the capture's `UsageHistory` row, and write the hold's end with its answer. Returns the
    answer, with the balance the statement left."""
    result = answer(ending.state.value, None, ending.usage_id, **ending.extra)
    params = {
        "end_hold_key": hold.hold_key,
        "end_state": ending.state.value,
        "end_result": result,
        "end_captured": ending.captured,
        "end_usage_id": ending.usage_id,
        "usage_row_id": ending.usage_id,
        "usage_operation": hold.operation,
        "usage_credits": ending.captured,
        "usage_details": usage,
        "usage_at": utcnow(),
    }
    writes = _CAPTURE_WRITES if ending.usage_id is not None else _RELEASE_WRITES
    if give_back > 0:
        change = change_credits(
            session,
            hold.credit_balance_id,
            delta=give_back,
            kind=LedgerKind.RELEASE,
            idempotency_key=f"release:{hold.hold_key}",
            reference=reference,
            then=Then(writes.change, params),
        )
        remaining: int | None = change.balance_after
    else:  # a capture of all it held: nothing moves, the same writes follow the balance as it is
        remaining = session.execute(writes.unchanged, {"credit_balance_id": hold.credit_balance_id, **params}).scalar()
    result["remaining"] = remaining
    hold.state, hold.end_answer = ending.state.value, result
    return result


def _ending_writes(balance: Any, with_usage: bool) -> list[Any]:
    """The hold's end (and a capture's `UsageHistory` row) as writes following `balance` (a CTE
    RETURNING "userId", "clerkUserId", "creditsRemaining": the moved balance, or the balance as
    it is), each writing only if `balance` has its row:

    ended AS (UPDATE credit_holds SET state = :end_state, end_answer = :end_answer ||
              jsonb_build_object('remaining', ...), ... WHERE hold_key = :end_hold_key AND EXISTS (balance)),
    booked AS (INSERT INTO "UsageHistory" (...) SELECT :usage_row_id, balance."userId", ... FROM balance)"""
    left = func.jsonb_build_object("remaining", select(balance.c.creditsRemaining).scalar_subquery())
    ended = (
        update(_holds)
        .where(_holds.c.hold_key == bindparam("end_hold_key", type_=Text), exists(balance.select()))
        .values(
            {
                _holds.c.state: bindparam("end_state", type_=Text),
                _holds.c.end_answer: column_param(_holds.c.end_answer, "end_result").op(
                    "||", return_type=_holds.c.end_answer.type
                )(left),
                _holds.c.captured: column_param(_holds.c.captured, "end_captured"),
                _holds.c.usage_id: bindparam("end_usage_id", type_=Text),
                _holds.c.ended_at: func.now(),
                # Named here so that SQLAlchemy does not SET it from the change statement's own
                # `credit_balance_id` parameter (it adds every parameter named as a column).
                _holds.c.credit_balance_id: _holds.c.credit_balance_id,
            }
        )
        .cte("ended")
    )
    if not with_usage:
        return [ended]
    booked = (
        insert(_history)
        .from_select(
            ["id", "userId", "creditBalanceId", "operationType", "creditsUsed", "details", "timestamp"],
            select(
                bindparam("usage_row_id", type_=Text),
                balance.c.userId,
                bindparam("credit_balance_id", type_=Text),
                column_param(_history.c.operationType, "usage_operation"),
                column_param(_history.c.creditsUsed, "usage_credits"),
                column_param(_history.c.details, "usage_details"),
                column_param(_history.c.timestamp, "usage_at"),
            ),
        )
        .cte("booked")
    )
    return [ended, booked]


@dataclass(frozen=True)
class _EndingWrites:
    change: FollowUp  # following a balance change (`change_credits`)
    unchanged: Select[Any]  # following the balance as it is: SELECT its "creditsRemaining"


def _ending_statements(with_usage: bool) -> _EndingWrites:
    balance = table_of(CreditBalance)
    as_is = (
        select(balance.c.userId, balance.c.clerkUserId, balance.c.creditsRemaining)
        .where(balance.c.id == bindparam("credit_balance_id", type_=Text))
        .cte("balance")
    )
    unchanged = select(as_is.c.creditsRemaining).add_cte(*_ending_writes(as_is, with_usage))
    return _EndingWrites(follow_up(lambda moved: _ending_writes(moved, with_usage)), unchanged)


_CAPTURE_WRITES = _ending_statements(with_usage=True)
_RELEASE_WRITES = _ending_statements(with_usage=False)


def _seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
