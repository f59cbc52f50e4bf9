"""Debits and holds in batches: what a pool process does with a batch of their messages.

The worker's main process holds `usage.debit`, `usage.hold`, `usage.capture` and `usage.release`
messages and hands them over as one batch whenever a pool process is free (`celery_ext.batching`,
their `Strategy`). `apply_batch` opens each signed message, applies them in one transaction
(`apply_many`), stores each signed answer, re-sends alone a request whose user (or hold) is not
known yet, and reports per message what to do with it. Past the batch's earliest deadline the
expired requests are settled and the rest applied again; a batch that fails otherwise is applied
again one request per transaction. More: docs/design.md ("Debit batches").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from celery import Task
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from celery_ext.backoff import retry_countdown
from celery_ext.batching import FAILED, REQUEUE, RETRIED, SUCCEEDED, BatchItem, Report, batching_strategy
from celery_ext.results import store_successes
from messaging.celery_config import CAPTURE_TASK, DEBIT_TASK, HOLD_TASK, RELEASE_TASK, USAGE_QUEUE
from models.settings import process_settings
from worker import database
from worker.errors import TRANSIENT_ERRORS
from worker.usage import debits, holds
from worker.usage.apply_many import Request, apply_many, ends_hold
from worker.usage.messages import Refused, UsageMessage, is_signed_answer, open_message, refuse, signed_answer
from worker.usage.requests import error
from worker.usage.retries import TASK_OPTIONS, USER_WAIT_SECONDS, user_wait_countdown, user_wait_over

log = structlog.get_logger(__name__)

# How a batch shows in Flower: one task of this name (never sent: the events are the worker's own).
BATCH_TASK = "usage.batch"
# The most debits one transaction applies, and the most the main process holds (unacked).
MAX_BATCH = 100
MAX_HELD_PER_PROCESS = 2 * MAX_BATCH

# PostgreSQL's answers when a deadline is reached: the commit-time check (migration 0008), and
# the lock timeout, which is capped at the time left (worker.usage.requests.lock_timeout_until).
_DEADLINE_PASSED, _LOCK_NOT_AVAILABLE = "PWD01", "55P03"


@dataclass(frozen=True)
class Debit:
    """One verified message of a batch (a debit, a hold, a capture or a release)."""

    item: BatchItem
    message: UsageMessage
    request: Request

    @property
    def final(self) -> bool:
        return user_wait_over(self.item.retries, self.message.args.get("wait_for_user", USER_WAIT_SECONDS))


@dataclass(frozen=True)
class _Answer:
    result: dict[str, Any]


@dataclass(frozen=True)
class _WaitForUser:
    pass


@dataclass(frozen=True)
class _Failure:
    error: Exception


_Outcome = _Answer | _WaitForUser | _Failure


def apply_batch(items: list[BatchItem]) -> list[Report]:
    """Apply a batch (in a pool process): one report per item, in order: (outcome, detail)."""
    from worker.celery_app import app  # the pool process's app (the module is loaded there)

    task = app.tasks[DEBIT_TASK]  # the batch's tasks share their backend, app and options
    started = time.monotonic()
    reports: list[Report | None] = [None] * len(items)
    debits_of: dict[int, Debit] = {}
    for n, item in enumerate(items):
        opened = _open(item)
        if isinstance(opened, Debit):
            debits_of[n] = opened
        elif isinstance(opened, UsageMessage):  # verified, but not a debit's arguments
            stored = store_signed(
                task, [(opened, error("invalid_request", "the arguments of usage.debit are not a debit"))]
            )
            reports[n] = (SUCCEEDED, "invalid_request") if stored else (REQUEUE, "answer not stored")
        else:
            reports[n] = (FAILED, "refused")
    order = list(debits_of)
    outcomes = dict(zip(order, _apply([debits_of[n] for n in order]), strict=True))
    answered = [(debits_of[n].message, o.result) for n, o in outcomes.items() if isinstance(o, _Answer)]
    stored = store_signed(task, answered)
    for n, outcome in outcomes.items():
        reports[n] = _publish(task, debits_of[n], outcome, stored)
    log.debug("debits.batch", size=len(items), seconds=round(time.monotonic() - started, 4))
    return [report or (FAILED, "no report") for report in reports]


def _open(item: BatchItem) -> Debit | UsageMessage | None:
    """The item's verified request; its message alone if the arguments are not its task's; None
    (refused: logged and counted) if it does not verify."""
    task = item.task or DEBIT_TASK
    try:
        message = open_message(task, item.task_id, item.kwargs)
    except Refused as exc:
        refuse(task, item.task_id, item.kwargs, str(exc))
        return None
    try:
        return Debit(item, message, request_of(message))
    except (KeyError, TypeError):
        return message


def request_of(message: UsageMessage) -> Request:
    """The request a verified message of a batched task carries (KeyError or TypeError if its
    arguments are not that task's)."""
    args, service, task_id = message.args, message.service, message.task_id
    if message.task == HOLD_TASK:
        return holds.HoldRequest.from_args(args, service, task_id, process_settings().hold_max_seconds)
    if message.task == CAPTURE_TASK:
        return holds.CaptureRequest.from_args(args, service)
    if message.task == RELEASE_TASK:
        return holds.ReleaseRequest.from_args(args, service)
    return debits.DebitRequest.from_args(args, service, task_id)


def _apply(batch: list[Debit]) -> list[_Outcome]:
    if not batch:
        return []
    try:
        with database.session_factory().begin() as session:
            answers = apply_many(session, [(debit.request, debit.final) for debit in batch], holds.lock_holds)
    except Exception as exc:
        if _deadline_error(exc):
            return _settle_the_expired(batch, exc)
        if len(batch) == 1:
            return [_Failure(exc)]
        log.warning("debits.batch_rolled_back", size=len(batch), error=type(exc).__name__)
        return [outcome for debit in batch for outcome in _apply([debit])]
    return [_Answer(answer) if answer is not None else _WaitForUser() for answer in answers]


def _deadline_error(exc: Exception) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in (
        _DEADLINE_PASSED,
        _LOCK_NOT_AVAILABLE,
    )


def _settle_the_expired(batch: list[Debit], exc: Exception) -> list[_Outcome]:
    """The batch reached a deadline: settle the debits past theirs by PostgreSQL's clock (each
    answers what its key holds, else `expired`), then apply the rest again without them."""
    try:
        with database.session_factory().begin() as session:
            now = float(session.scalar(select(func.extract("epoch", func.clock_timestamp()))) or 0)
            expired = {n for n, debit in enumerate(batch) if _past(debit, now)}
            in_key_order = sorted(expired, key=lambda n: _key(batch[n]))
            settled = {n: debits.settle(session, batch[n].request) for n in in_key_order}
    except Exception as settle_exc:
        return [_Failure(settle_exc)] * len(batch)
    if not expired:  # a lock wait outlasted DB_LOCK_TIMEOUT_MS: no deadline involved
        return [outcome for debit in batch for outcome in _apply([debit])] if len(batch) > 1 else [_Failure(exc)]
    log.info("debits.deadline_reached", size=len(batch), expired=len(expired))
    rest = iter(_apply([debit for n, debit in enumerate(batch) if n not in expired]))
    return [_Answer(settled[n] or error("not_settled", "")) if n in expired else next(rest) for n in range(len(batch))]


def _past(debit: Debit, now: float) -> bool:
    not_after = getattr(debit.request, "not_after", None)
    return not_after is not None and not_after <= now


def _key(debit: Debit) -> str:
    request = debit.request
    return request.hold_key if ends_hold(request) else request.idempotency_key


def store_signed(task: Task, answers: list[tuple[UsageMessage, dict[str, Any]]]) -> bool:
    """Store the signed answers, each under the task id it answers; False if that failed
    (logged). The first signed answer of a task id stands; an unsigned one is overwritten."""
    messages = {message.task_id: message for message, _ in answers}
    try:
        signed = [(message.task_id, signed_answer(message, answer)) for message, answer in answers]
        store_successes(task.backend, signed, keep=lambda task_id, result: is_signed_answer(messages[task_id], result))
    except Exception as exc:
        log.error("usage.answers_not_stored", size=len(answers), error=type(exc).__name__)
        return False
    return True


def _publish(task: Task, debit: Debit, outcome: _Outcome, answers_stored: bool) -> Report:
    """Report an answer stored with the batch's, or re-send the debit, after the commit. A
    broker or backend that fails here leaves the message to be requeued: its rerun answers what
    the commit stored."""
    item = debit.item
    try:
        if isinstance(outcome, _Answer):
            if not answers_stored:
                return REQUEUE, "answers not stored"
            _log_finished(debit, outcome.result.get("status"))
            return SUCCEEDED, str(outcome.result.get("status"))  # what the batch's Flower task counts
        if isinstance(outcome, _WaitForUser):
            countdown = user_wait_countdown(item.retries, getattr(debit.request, "not_after", None))
            return _resend(task, debit, countdown, "waiting_for_user")
        if isinstance(outcome.error, TRANSIENT_ERRORS) and item.retries < TASK_OPTIONS["max_retries"]:
            return _resend(task, debit, retry_countdown(task, item.retries), type(outcome.error).__name__)
        _log_finished(debit, "failure", error=type(outcome.error).__name__)
        return FAILED, type(outcome.error).__name__
    except Exception as exc:
        log.error("debits.answer_not_stored", task_id=item.task_id, error=type(exc).__name__)
        return REQUEUE, type(exc).__name__


def _resend(task: Task, debit: Debit, countdown: float, reason: str) -> Report:
    """The debit again, on its own, as Celery's `Task.retry` would send it: same id, same signed
    message, one more try."""
    item = debit.item
    # RETRY for Flower and `AsyncResult.state` (the client waits for a signed answer only).
    task.backend.mark_as_retry(item.task_id, RuntimeError(reason))
    task.app.send_task(
        item.task or DEBIT_TASK,
        kwargs=item.kwargs,
        task_id=item.task_id,
        retries=item.retries + 1,
        countdown=countdown,
        expires=item.expires,
        ignore_result=True,
    )
    _log_finished(debit, "retry", reason=reason, countdown=round(countdown, 3))
    return RETRIED, reason


def _log_finished(debit: Debit, outcome: Any, **fields: Any) -> None:
    request = debit.request
    log.info(
        "task.finished",
        task_id=debit.item.task_id,
        task=debit.message.task,
        service=debit.message.service,
        idempotency_key=_key(debit),
        clerk_user_id=getattr(request, "clerk_user_id", None),
        operation=getattr(request, "operation", None),
        outcome=outcome,
        **fields,
    )


# The Strategy of `usage.debit`, `usage.hold`, `usage.capture` and `usage.release`
# (worker.usage.tasks.BATCHING_STRATEGY names it): one batcher for all four.
debit_batching_strategy = batching_strategy(
    apply_batch,
    max_batch=MAX_BATCH,
    max_held_per_process=MAX_HELD_PER_PROCESS,
    sole_queue=USAGE_QUEUE,
    monitor_name=BATCH_TASK,
)
