"""The bookkeeping of runs of `webhooks.process`: started, ended, died, waiting for a retry.

A run's start is counted (`attempts`, `last_attempt_at`, `running_since`) in a transaction of its
own, committed before any work; a run that ends either way clears `running_since`. Found still
set, it means the previous run died: a crash. A row whose runs died `MAX_CRASHES` times is
dead-lettered. `enqueued_at` is when the row's latest message was sent, or its retry is due.
Why each choice: docs/design.md ("How a delivery reaches its final state").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, literal, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningUpdate

from models.inbox import InboxStatus, WebhookInbox
from worker.errors import describe
from worker.registry import Delivery

# A row killed mid-run this many times is dead-lettered. Above 1: infrastructure kills a healthy
# run too (a worker SIGKILLed during a deploy, the database dropping mid-run).
MAX_CRASHES = 4
# The sweeper's slow re-drive of a row whose retries ran out (`record_exhausted`).
SLOW_BACKOFF_STEP_SECONDS = 60
SLOW_BACKOFF_MAX_SECONDS = 3600


@dataclass(frozen=True)
class Skip:
    """The run does no work: the row is final, missing, or has just been dead-lettered."""

    answer: dict[str, Any]


def _start_statement() -> ReturningUpdate[Any]:
    """Count the run on a pending row and return what it applies (built once, cached compiled)."""
    died = WebhookInbox.running_since.is_not(None)
    return (
        update(WebhookInbox)
        .where(WebhookInbox.id == bindparam("inbox_id"), WebhookInbox.status == InboxStatus.PENDING.value)
        .values(
            attempts=WebhookInbox.attempts + 1,
            last_attempt_at=func.now(),
            running_since=func.now(),
            crashes=WebhookInbox.crashes + case((died, 1), else_=0),
        )
        .returning(
            WebhookInbox.crashes,
            WebhookInbox.source,
            WebhookInbox.external_id,
            WebhookInbox.event_type,
            WebhookInbox.payload,
            WebhookInbox.received_at,
        )
    )


_START = _start_statement()


def start_run(connection: Connection, inbox_id: int) -> Delivery | Skip:
    """Record the start of a run on a pending row and return the row as a `Delivery`.

    `connection` is in autocommit, so this is committed before the work; the caller holds the
    row's lock in its own transaction (`claim_row`), so no other run starts meanwhile."""
    started = connection.execute(_START, {"inbox_id": inbox_id}).one_or_none()
    if started is None:
        status = connection.scalar(select(WebhookInbox.status).where(WebhookInbox.id == inbox_id))
        return Skip({"inbox_id": inbox_id, "status": status or "missing"})
    crashes, source, external_id, event_type, payload, received_at = started
    if crashes >= MAX_CRASHES:
        dead_letter(
            connection,
            inbox_id,
            f"dead letter: {crashes} runs died mid-task (killed, out of memory or over the time limit)",
        )
        return Skip({"inbox_id": inbox_id, "status": InboxStatus.FAILED.value})
    return Delivery(inbox_id, source, external_id, event_type, payload, received_at)


def dead_letter(session: Session | Connection, inbox_id: int, why: str) -> None:
    _end_run(session, inbox_id, status=InboxStatus.FAILED.value, last_error=why[:2000])


def record_retry(session: Session, inbox_id: int, error: BaseException, due_at: datetime) -> None:
    """A try failed and its retry is due at `due_at`: the row waits for that message."""
    _end_run(session, inbox_id, last_error=describe(error), enqueued_at=due_at)


def record_failure(session: Session, inbox_id: int, error: BaseException) -> None:
    """A try failed for good (a payload that can never succeed, a bug): the dead letter."""
    _end_run(session, inbox_id, status=InboxStatus.FAILED.value, last_error=describe(error))


def record_exhausted(session: Session, inbox_id: int, error: BaseException, *, runs_per_chain: int) -> None:
    """Transient errors outlasted a chain of `runs_per_chain` tries while the database answered
    (this write needs it): not a dead letter. The row stays pending and the sweeper re-drives it
    with a slow backoff: after the pending age plus 0, 1, 3, 7 ... minutes for the 1st, 2nd, 3rd,
    4th... exhausted chain (counted from `attempts`), at most an hour. When the database itself
    is down this cannot be written: the row stays as it was and the sweeper re-drives it as soon
    as the database answers again."""
    chains = func.greatest(WebhookInbox.attempts / runs_per_chain, 1)  # integer division
    extra_seconds = func.least(SLOW_BACKOFF_STEP_SECONDS * (func.power(2, chains - 1) - 1), SLOW_BACKOFF_MAX_SECONDS)
    _end_run(
        session,
        inbox_id,
        last_error=f"{describe(error)} (retries exhausted: re-driven by the sweeper)"[:2000],
        enqueued_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, extra_seconds),
    )


def _end_run(session: Session | Connection, inbox_id: int, **values: Any) -> None:
    session.execute(
        update(WebhookInbox)
        .where(WebhookInbox.id == inbox_id, WebhookInbox.status == InboxStatus.PENDING)
        .values(running_since=literal(None), **values)
    )
