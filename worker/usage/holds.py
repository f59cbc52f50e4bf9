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

from sqlalchemy import Row, func, insert, select
from sqlalchemy.orm import Session

from models.app import CreditBalance, UsageHistory
from models.base import constant, table_of, utcnow
from models.ids import cuid
from models.ledger import LedgerKind
from models.usage import CreditHold, HoldState, UsageRequest
from worker.credits.ledger import LedgerChange, Then, change_credits, follow_up
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

    def decide(self, session: Session, final: bool, owner: str | None) -> dict[str, Any]:
        hold = _open_hold(session, self.hold_key, self.service, final)
        if isinstance(hold, dict):
            return hold
        if self.credits > hold.credits:
            return answer("over_capture", held=hold.credits)  # nothing changes: the hold stays open
        rest = hold.credits - self.credits
        change = _give_back(session, hold, rest, f"hold {hold.hold_key} captured {self.credits}: the rest released")
        usage_id = cuid()
        session.execute(insert(_history).values(_usage_row(hold, usage_id, self.credits, self.details)))
        remaining = change.balance_after if change else _balance(session, hold)
        result = answer("captured", remaining, usage_id, credits=self.credits, released=rest)
        _end(hold, HoldState.CAPTURED, result, captured=self.credits, usage_id=usage_id)
        return result


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

    def decide(self, session: Session, final: bool, owner: str | None) -> dict[str, Any]:
        hold = _open_hold(session, self.hold_key, self.service, final)
        if isinstance(hold, dict):
            return hold
        change = _give_back(session, hold, hold.credits, f"hold {hold.hold_key} released")
        assert change is not None
        result = answer("released", change.balance_after, None, released=hold.credits)
        _end(hold, HoldState.RELEASED, result)
        return result


def lock_holds(session: Session, keys: list[str]) -> dict[str, str]:
    """Lock the holds of these keys in key order; {key: the Clerk user id it holds for}."""
    if not keys:
        return {}
    rows = session.execute(
        select(_holds.c.hold_key, _holds.c.clerk_user_id)
        .where(_holds.c.hold_key.in_(keys))
        .order_by(_holds.c.hold_key)
        .with_for_update()
    )
    return {key: clerk_user_id for key, clerk_user_id in rows}


def expire(session: Session, hold: CreditHold) -> dict[str, Any]:
    """Release an open hold past its `expires_at` (its row locked): all of it comes back."""
    change = _give_back(session, hold, hold.credits, f"hold {hold.hold_key} expired")
    assert change is not None
    result = answer("expired", change.balance_after, None, released=hold.credits)
    _end(hold, HoldState.EXPIRED, result)
    return result


def expire_due(session: Session, limit: int = 100) -> list[str]:
    """Expire up to `limit` open holds past their `expires_at`, skipping any a capture or release
    holds locked now (it decides; a later sweep finds what is still open). Their keys."""
    due = session.scalars(
        select(CreditHold)
        .where(CreditHold.state == HoldState.OPEN.value, CreditHold.expires_at < func.clock_timestamp())
        .order_by(CreditHold.hold_key)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for hold in due:
        expire(session, hold)
    return [hold.hold_key for hold in due]


def settle_hold(session: Session, request: HoldRequest) -> dict[str, Any] | None:
    """A hold whose caller stopped waiting: as a debit (`debits.settle`)."""
    return settle(session, request)


def _open_hold(session: Session, key: str, service: str | None, final: bool) -> CreditHold | dict[str, Any]:
    """The hold of `key`, locked and still open, or the answer that ends a capture or release
    here: `unknown_hold`, how the hold ended, or `expired` (it expires now if its time passed)."""
    found = _locked_hold(session, key, service, final)
    if found is None:
        return answer("unknown_hold")
    hold, past = found
    if hold.state != HoldState.OPEN:
        return dict(hold.end_answer or {})
    if past:
        return expire(session, hold)
    return hold


def _locked_hold(session: Session, key: str, service: str | None, final: bool) -> tuple[CreditHold, bool] | None:
    """The hold of `key` (locked) and whether PostgreSQL's clock has passed its `expires_at`; None
    for no hold of this service (with final=False: NotYetKnown, the hold may still be queued)."""
    found = session.execute(
        select(CreditHold, (func.clock_timestamp() > CreditHold.expires_at).label("past"))
        .where(CreditHold.hold_key == key)
        .with_for_update(of=CreditHold)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if found is None or (found[0].service is not None and found[0].service != service):
        if not final:
            raise NotYetKnown(key)
        return None
    return found[0], bool(found[1])


def _give_back(session: Session, hold: CreditHold, credits: int, reference: str) -> LedgerChange | None:
    if credits == 0:
        return None
    return change_credits(
        session,
        hold.credit_balance_id,
        delta=credits,
        kind=LedgerKind.RELEASE,
        idempotency_key=f"release:{hold.hold_key}",
        reference=reference,
    )


def _usage_row(hold: CreditHold, usage_id: str, credits: int, details: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": usage_id,
        "userId": hold.user_id,
        "creditBalanceId": hold.credit_balance_id,
        "operationType": hold.operation,
        "creditsUsed": credits,
        "details": details,
        "timestamp": utcnow(),
    }


def _balance(session: Session, hold: CreditHold) -> int | None:
    return session.scalar(select(CreditBalance.credits_remaining).where(CreditBalance.id == hold.credit_balance_id))


def _end(hold: CreditHold, state: HoldState, result: dict[str, Any], **fields: Any) -> None:
    hold.state = state.value
    hold.end_answer = result
    hold.ended_at = datetime.now(UTC)
    for name, value in fields.items():
        setattr(hold, name, value)


def _seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
