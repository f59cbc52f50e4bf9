"""Usage refunds: give back all or part of an earlier applied debit, never more than was taken.

A refund is its own request with its own key (`worker.usage.requests`): a `UsageHistory` row with
negative `creditsUsed` and a `refund` ledger entry. Concurrent refunds of one debit take turns on
the debit's row lock, so together they never give back more than it took.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.app import UsageHistory
from models.ids import cuid
from models.ledger import LedgerKind
from models.usage import UsageRequest
from worker.credits.ledger import change_credits
from worker.usage.requests import (
    NotYetKnown,
    answer,
    applied_answer,
    autoflush,
    claim_key,
    claim_params,
    error,
    finish,
    is_amount,
    repeat_answer,
    usage_and_answer,
)


@dataclass(frozen=True)
class RefundRequest:
    clerk_user_id: str
    idempotency_key: str
    refund_of: str
    credits: int | None = None
    details: dict[str, Any] | None = None
    service: str | None = None  # the service that sent it: only the debit's own may refund it
    task_id: str | None = None  # the message that carries it

    @classmethod
    def from_args(cls, args: dict[str, Any], service: str | None, task_id: str | None = None) -> RefundRequest:
        """The refund a `usage.refund` request asks for (KeyError or TypeError if it is not one)."""
        return cls(
            args["clerk_user_id"],
            args["idempotency_key"],
            args["refund_of"],
            args.get("credits"),
            args.get("details"),
            service,
            task_id,
        )


def refund(session: Session, request: RefundRequest, *, final: bool = True) -> dict[str, Any]:
    """Give back all (credits=None) or part of an earlier applied debit. With `final=False` a
    debit key not seen yet raises `NotYetKnown` (the debit may still be in the queue)."""
    if request.credits is not None and not is_amount(request.credits, minimum=1):
        return error("invalid_credits", "credits must be a positive integer")
    autoflush(session)
    arguments = asdict(request)
    del arguments["service"], arguments["task_id"]
    stored = claim_key(
        session,
        claim_params(
            request.idempotency_key,
            "refund",
            request.clerk_user_id,
            request=arguments,
            service=request.service,
            task_id=request.task_id,
            refund_of=request.refund_of,
        ),
    )
    if stored is not None:
        same = (stored.kind, stored.clerk_user_id, stored.refund_of, stored.request.get("credits")) == (
            "refund",
            request.clerk_user_id,
            request.refund_of,
            request.credits,
        )
        return repeat_answer(stored, same, request.task_id)
    debited = _lock_debit(session, request)
    if not isinstance(debited, UsageRequest):
        if debited is _NOT_YET and not final:
            raise NotYetKnown(request.refund_of)
        return finish(session, request.idempotency_key, answer("unknown_debit"))
    refundable = (debited.credits or 0) - refunded_so_far(session, request.refund_of)
    credits = refundable if request.credits is None else request.credits
    if credits < 1 or credits > refundable:
        return finish(session, request.idempotency_key, answer("over_refund", refundable=refundable))
    return _give_back(session, request, debited, credits)


def _give_back(session: Session, request: RefundRequest, debited: UsageRequest, credits: int) -> dict[str, Any]:
    # An applied debit always names the UsageHistory row it wrote; the Next.js app owns those
    # rows, so one may have been deleted since. Refunding then needs a person: fail loudly.
    usage = session.get(UsageHistory, debited.usage_id) if debited.usage_id is not None else None
    if usage is None:
        raise LookupError(f"the UsageHistory row {debited.usage_id} of debit {request.refund_of} does not exist")
    usage_id = cuid()
    change = change_credits(
        session,
        usage.credit_balance_id,
        delta=credits,
        kind=LedgerKind.REFUND,
        idempotency_key=f"refund:{request.idempotency_key}",
        reference=f"refund of usage {request.refund_of}",
        then=usage_and_answer(
            request.idempotency_key,
            usage_id,
            credits=credits,
            operation=usage.operation_type,
            credits_used=-credits,
            details=request.details,
        ),
    )
    return applied_answer(usage_id, change.balance_after)


_NOT_YET, _NOT_YOURS = "not yet", "not yours"


def _lock_debit(session: Session, request: RefundRequest) -> UsageRequest | str:
    """The debit being refunded, locked so that concurrent refunds of it run one at a time;
    `_NOT_YET` when no such key is stored (the debit may still be queued). A key that belongs
    to another user or service, or to a refund, is `_NOT_YOURS`: answered as if it did not exist.
    (A debit stored before services were named may be refunded by any service.)"""
    debited = session.scalar(
        select(UsageRequest).where(UsageRequest.idempotency_key == request.refund_of).with_for_update()
    )
    if debited is None:
        return _NOT_YET
    if debited.kind != "debit" or debited.clerk_user_id != request.clerk_user_id:
        return _NOT_YOURS
    if debited.service is not None and debited.service != request.service:
        return _NOT_YOURS
    return debited


def refunded_so_far(session: Session, debit_key: str) -> int:
    return session.scalar(
        select(func.coalesce(func.sum(UsageRequest.credits), 0)).where(
            UsageRequest.refund_of == debit_key, UsageRequest.kind == "refund", UsageRequest.status == "applied"
        )
    )
