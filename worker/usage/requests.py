"""The idempotency records of usage requests (`usage_requests`) and the answers stored on them.

Every debit and refund claims its key first (INSERT ... ON CONFLICT DO NOTHING: a concurrent
request with the same key waits on that row, then reads the first one's committed outcome) and
stores its final answer on the key in the same transaction as its effect. The same key sent
again gets the stored answer back; with other arguments it is refused; errors store nothing.
Every answer and status: docs/usage-api.md. The statements are built once at import
(docs/design.md, "Debits").
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import (
    CTE,
    BindParameter,
    Column,
    ColumnElement,
    Double,
    Integer,
    Text,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Session

from models.app import OperationType, UsageHistory
from models.base import constant, table_of, utcnow
from models.settings import process_settings
from models.usage import UsageRequest
from worker.credits.ledger import Then, follow_up
from worker.errors import LedgerKeyConflict

PENDING = "pending"


class NotYetKnown(Exception):
    """The user (or, for a refund, the debit) does not exist yet: the caller may wait for the
    webhook (or the debit task) to create it. The transaction must roll back."""


_T = TypeVar("_T")


def column_param(column: Column[_T], name: str | None = None) -> BindParameter[_T]:
    """A bound parameter typed as the column (so JSONB, enums... are converted as the ORM did)."""
    return bindparam(name or column.key, type_=column.type)


_requests = table_of(UsageRequest)
_history = table_of(UsageHistory)


def seconds_param(name: str) -> ColumnElement[float]:
    """A bound Unix time (or NULL), typed for PostgreSQL: a bare NULL parameter has no type."""
    return cast(bindparam(name, type_=Double), Double)


def lock_timeout_until(deadline: ColumnElement[Any]) -> ColumnElement[str]:
    """The lock timeout (ms, as text) for the rest of a transaction whose earliest deadline is
    `deadline` (Unix seconds, or NULL): the time left by PostgreSQL's clock, at least 1 ms, at
    most `:max_lock_ms` (DB_LOCK_TIMEOUT_MS; 0 = no cap). A lock wait then never outlasts it."""
    max_ms = bindparam("max_lock_ms", type_=Integer)
    left_ms = func.floor(func.extract("epoch", func.to_timestamp(deadline) - func.clock_timestamp()) * 1000)
    capped = case((max_ms == 0, left_ms), else_=func.least(max_ms, left_ms))
    return cast(case((deadline.is_(None), max_ms), else_=func.greatest(1, capped)), Text)


# INSERT the key as pending; RETURNING it only if this transaction now owns it. Before the row
# is inserted (and may wait for a concurrent insert of the same key), the transaction's lock
# timeout is capped at the time left before the earliest deadline of its requests.
_LOCK_TIMEOUT_SET = (
    select(func.set_config("lock_timeout", lock_timeout_until(seconds_param("earliest_deadline")), True))
    .scalar_subquery()
    .is_not(None)
)
CLAIM = (
    insert(_requests)
    .from_select(
        [
            "idempotency_key",
            "kind",
            "clerk_user_id",
            "operation",
            "refund_of",
            "request",
            "service",
            "task_id",
            "not_after",
            "status",
            "result",
        ],
        select(
            *(
                column_param(column)
                for column in (
                    _requests.c.idempotency_key,
                    _requests.c.kind,
                    _requests.c.clerk_user_id,
                    _requests.c.operation,
                    _requests.c.refund_of,
                    _requests.c.request,
                    _requests.c.service,
                    _requests.c.task_id,
                )
            ),
            func.to_timestamp(seconds_param("not_after")),
            constant(PENDING),
            cast(constant('{"status": "pending"}'), JSONB),
        ).where(_LOCK_TIMEOUT_SET),
    )
    .on_conflict_do_nothing(index_elements=[_requests.c.idempotency_key])
    .returning(_requests.c.idempotency_key)
)


def claim_params(
    key: str,
    kind: str,
    clerk_user_id: str,
    *,
    request: dict[str, Any],
    service: str | None,
    task_id: str | None = None,
    not_after: float | None = None,
    earliest_deadline: float | None = None,
    operation: str | None = None,
    refund_of: str | None = None,
) -> dict[str, Any]:
    """The parameters of CLAIM. `earliest_deadline`: of every request of the transaction."""
    return {
        "idempotency_key": key,
        "kind": kind,
        "clerk_user_id": clerk_user_id,
        "operation": operation,
        "refund_of": refund_of,
        "request": request,
        "service": service,
        "task_id": task_id,
        "not_after": not_after,
        "earliest_deadline": earliest_deadline if earliest_deadline is not None else not_after,
        "max_lock_ms": process_settings().db_lock_timeout_ms,
    }


_FINISH_VALUES = {
    column: column_param(column)
    for column in (_requests.c.status, _requests.c.result, _requests.c.credits, _requests.c.usage_id)
}
# The key's parameter is named "key": a column's own name is reserved for its SET value.
_FINISH = (
    update(_requests)
    .where(_requests.c.idempotency_key == column_param(_requests.c.idempotency_key, "key"))
    .values(_FINISH_VALUES)
)


def _usage_and_answer(moved: CTE) -> list[CTE]:
    """What an applied debit or refund writes besides the balance and its ledger entry, as
    writes that follow the change in its own statement (`worker.credits.ledger.follow_up`):

        usage AS (INSERT INTO "UsageHistory" (...) SELECT :new_usage_id, moved."userId", ... FROM moved),
        answered AS (UPDATE usage_requests SET status = 'applied',
                     result = :applied_answer || jsonb_build_object('remaining', (SELECT ... FROM moved)),
                     ... WHERE idempotency_key = :key AND EXISTS (SELECT ... FROM moved))

    The stored answer's `remaining` is the balance the change left, as the caller gets it."""
    usage = (
        insert(_history)
        .from_select(
            ["id", "userId", "creditBalanceId", "operationType", "creditsUsed", "details", "timestamp"],
            select(
                bindparam("new_usage_id", type_=_history.c.id.type),
                moved.c.userId,
                bindparam("credit_balance_id", type_=_history.c.creditBalanceId.type),
                bindparam("usage_operation", type_=_history.c.operationType.type),
                bindparam("usage_credits_used", type_=_history.c.creditsUsed.type),
                bindparam("usage_details", type_=_history.c.details.type),
                bindparam("usage_time", type_=_history.c.timestamp.type),
            ),
        )
        .cte("usage")
    )
    return [usage, answered_if_moved(moved, "applied", usage_id=bindparam("new_usage_id", type_=_history.c.id.type))]


def answered_if_moved(moved: CTE, status: str, usage_id: ColumnElement[Any] | None = None) -> CTE:
    """The stored answer of a change's key, as a write that follows the change in its statement:

    answered AS (UPDATE usage_requests SET status = <status>,
                 result = :applied_answer || jsonb_build_object('remaining', (SELECT ... FROM moved)),
                 credits = :applied_credits [, usage_id = ...]
                 WHERE idempotency_key = :key AND EXISTS (SELECT ... FROM moved))"""
    left = select(moved.c.creditsRemaining).scalar_subquery()
    remaining = func.jsonb_build_object("remaining", left)
    values: dict[Any, Any] = {
        _requests.c.status: constant(status),
        _requests.c.result: bindparam("applied_answer", type_=_requests.c.result.type).op(
            "||", return_type=_requests.c.result.type
        )(remaining),
        _requests.c.credits: bindparam("applied_credits", type_=_requests.c.credits.type),
    }
    if usage_id is not None:
        values[_requests.c.usage_id] = usage_id
    return (
        update(_requests)
        .where(
            _requests.c.idempotency_key == bindparam("key", type_=_requests.c.idempotency_key.type),
            exists(moved.select()),  # no moved row: nothing answered here
        )
        .values(values)
        .cte("answered")
    )


USAGE_AND_ANSWER = follow_up(_usage_and_answer)

_FORGET = delete(_requests).where(_requests.c.idempotency_key == column_param(_requests.c.idempotency_key, "key"))


def answer(status: str, remaining: int | None = None, usage_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"status": status, "remaining": remaining, "usage_id": usage_id, **extra}


def error(code: str, detail: str) -> dict[str, Any]:
    return answer("error", error=code, detail=detail)


def outcome(session: Session, idempotency_key: str, service: str | None) -> dict[str, Any]:
    """The authoritative answer stored for a key of `service`, or status `unknown` if none was
    stored (never sent, still queued or retrying, an `error` result, which is not stored, or a
    key of another service). Keys stored before services were named belong to every service."""
    stored = session.scalar(
        select(UsageRequest).where(
            UsageRequest.idempotency_key == idempotency_key,
            UsageRequest.status != PENDING,
            or_(UsageRequest.service.is_(None), UsageRequest.service == service),
        )
    )
    if stored is None:
        return answer("unknown")
    return {**stored.result, "kind": stored.kind}


def claim_key(session: Session, params: dict[str, Any]) -> UsageRequest | None:
    """Insert the key as pending (`claim_params`); None if this transaction now owns it, else
    the stored row."""
    claimed = session.execute(CLAIM, params).scalar_one_or_none()
    if claimed is not None:
        return None
    return stored_request(session, params["idempotency_key"])


def stored_request(session: Session, key: str) -> UsageRequest:
    """The row of a key this transaction could not claim: read in a statement of its own, after
    the claim waited for the transaction that inserted it, so it sees that one's committed row."""
    stored = session.scalar(
        select(UsageRequest).where(UsageRequest.idempotency_key == key).execution_options(populate_existing=True)
    )
    if stored is None:
        # The conflicting row vanished between the two statements (its transaction forgot it):
        # retry the whole transaction.
        raise LedgerKeyConflict(key)
    return stored


def repeat_answer(stored: UsageRequest, same_request: bool, task_id: str | None = None) -> dict[str, Any]:
    """The answer to a key sent again: `duplicate` of the stored one; the stored answer itself
    to the very message that made it, run again (redelivered); `conflict` with other arguments."""
    if task_id is not None and stored.task_id == task_id and same_request:
        return dict(stored.result)
    if not same_request:
        return answer("conflict", error="idempotency key reused with other arguments")
    return {**stored.result, "status": "duplicate", "original_status": stored.result["status"]}


def finish(session: Session, key: str, result: dict[str, Any]) -> dict[str, Any]:
    """Store a final answer that applied nothing on the key this transaction claimed."""
    session.execute(
        _FINISH, {"key": key, "status": result["status"], "result": result, "credits": None, "usage_id": None}
    )
    return result


def usage_and_answer(
    key: str,
    usage_id: str,
    *,
    credits: int,
    operation: OperationType,
    credits_used: int,
    details: dict[str, Any] | None,
) -> Then:
    """For `change_credits(..., then=...)`: write the `UsageHistory` row the Next.js app shows
    (`creditsUsed` > 0 for usage, < 0 for a refund) and store the `applied` answer naming it on
    the key, in the change's own statement and only if the change applied. The answer is then
    `applied_answer(usage_id, change.balance_after)`."""
    return Then(
        USAGE_AND_ANSWER,
        {
            "key": key,
            "new_usage_id": usage_id,
            "applied_answer": applied_answer(usage_id, None),
            "applied_credits": credits,
            "usage_operation": operation,
            "usage_credits_used": credits_used,
            "usage_details": details,
            "usage_time": utcnow(),
        },
    )


def applied_answer(usage_id: str, remaining: int | None) -> dict[str, Any]:
    return answer("applied", remaining, usage_id)


def forget_key(session: Session, key: str) -> None:
    """Release a key claimed by this transaction for a request that stores no answer."""
    session.execute(_FORGET, {"key": key})


def autoflush(session: Session) -> None:
    """What an ORM statement's autoflush did before these Core statements: pending changes first."""
    if session.autoflush:
        session.flush()


def is_amount(value: Any, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
