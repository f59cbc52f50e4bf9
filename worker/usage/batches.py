"""`usage.debit` in batches: what a pool process does with a batch of debit messages.

The worker's main process holds debit messages and hands them over as one batch whenever a pool
process is free (`celery_ext.batching`, this task's `Strategy`). `apply_batch` applies them in one
transaction (`debits.debit_many`), stores each answer, re-sends a debit whose user is not known
yet on its own, and reports per message what to do with it. A batch that fails as a whole is
applied again one debit per transaction. Guarantees and history: docs/design.md ("Debit batches").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import structlog
from celery.utils.saferepr import saferepr

from celery_ext.backoff import retry_countdown
from celery_ext.batching import FAILED, REQUEUE, RETRIED, SUCCEEDED, BatchItem, Report, batching_strategy
from celery_ext.results import store_successes
from messaging.celery_config import USAGE_QUEUE
from worker import database
from worker.errors import TRANSIENT_ERRORS
from worker.task_base import TransactionalTask
from worker.usage import debits
from worker.usage.tasks import (
    DEBIT_TASK,
    TASK_OPTIONS,
    USER_WAIT_SECONDS,
    user_wait_countdown,
    user_wait_over,
)

log = structlog.get_logger(__name__)

# The most debits one transaction applies, and the most the main process holds (unacked).
MAX_BATCH = 100
MAX_HELD_PER_PROCESS = 2 * MAX_BATCH

DebitTask = TransactionalTask[..., dict[str, Any]]


@dataclass(frozen=True)
class _Answer:
    result: dict[str, Any]


@dataclass(frozen=True)
class _WaitForUser:
    not_after: float | None


@dataclass(frozen=True)
class _Failure:
    error: Exception


_Outcome = _Answer | _WaitForUser | _Failure


def apply_batch(items: list[BatchItem]) -> list[Report]:
    """Apply a batch (in a pool process): one transaction, then each answer stored or each
    waiting debit re-sent. One report per item, in order: (outcome, detail)."""
    from worker.celery_app import app  # the pool process's app (the module is loaded there)

    task = cast(DebitTask, app.tasks[DEBIT_TASK])
    started = time.monotonic()
    outcomes = _apply(items)
    applied = list(zip(items, outcomes, strict=True))
    stored = store_answers(task.backend, [(i.task_id, o.result) for i, o in applied if isinstance(o, _Answer)])
    reports = [_publish(task, item, outcome, stored) for item, outcome in applied]
    log.debug("debits.batch", size=len(items), seconds=round(time.monotonic() - started, 4))
    return reports


def _apply(items: list[BatchItem]) -> list[_Outcome]:
    try:
        requests = [(_debit_request(item), _final(item)) for item in items]
        with database.session_factory().begin() as session:
            answers = debits.debit_many(session, requests)
    except Exception as exc:
        if len(items) == 1:
            return [_Failure(exc)]
        log.warning("debits.batch_rolled_back", size=len(items), error=type(exc).__name__)
        return [outcome for item in items for outcome in _apply([item])]
    return [
        _Answer(answer) if answer is not None else _WaitForUser(request.not_after)
        for (request, _), answer in zip(requests, answers, strict=True)
    ]


def _debit_request(item: BatchItem) -> debits.DebitRequest:
    return debits.DebitRequest.from_task_kwargs(item.kwargs)


def _final(item: BatchItem) -> bool:
    return user_wait_over(item.retries, item.kwargs.get("wait_for_user", USER_WAIT_SECONDS))


def store_answers(backend: Any, answers: list[tuple[str, dict[str, Any]]]) -> bool:
    """Store the batch's answers; False if that failed (the messages are then requeued: a rerun
    answers what the commit stored)."""
    try:
        store_successes(backend, answers)
    except Exception as exc:
        log.error("debits.answers_not_stored", size=len(answers), error=type(exc).__name__)
        return False
    return True


def _publish(task: DebitTask, item: BatchItem, outcome: _Outcome, answers_stored: bool) -> Report:
    """Report an answer stored with the batch's (`store_answers`), or re-send the debit, after
    the commit. A broker or backend that fails here leaves the message to be requeued: its
    rerun answers what the commit stored."""
    try:
        if isinstance(outcome, _Answer):
            if not answers_stored:
                return REQUEUE, "answers not stored"
            _log_finished(item, outcome.result.get("status"))
            return SUCCEEDED, saferepr(outcome.result)
        if isinstance(outcome, _WaitForUser):
            return _resend(task, item, user_wait_countdown(item.retries, outcome.not_after), "waiting_for_user")
        if isinstance(outcome.error, TRANSIENT_ERRORS) and item.retries < TASK_OPTIONS["max_retries"]:
            return _resend(task, item, retry_countdown(task, item.retries), type(outcome.error).__name__)
        task.backend.mark_as_failure(item.task_id, outcome.error)
        _log_finished(item, "failure", error=type(outcome.error).__name__)
        return FAILED, type(outcome.error).__name__
    except Exception as exc:
        log.error("debits.answer_not_stored", task_id=item.task_id, error=type(exc).__name__)
        return REQUEUE, type(exc).__name__


def _resend(task: DebitTask, item: BatchItem, countdown: float, reason: str) -> Report:
    """The debit again, on its own, as Celery's `Task.retry` would send it. RETRY is stored
    first: a re-send that runs at once must not have its answer overwritten."""
    task.backend.mark_as_retry(item.task_id, RuntimeError(reason))
    task.app.send_task(
        DEBIT_TASK,
        kwargs=item.kwargs,
        task_id=item.task_id,
        retries=item.retries + 1,
        countdown=countdown,
        expires=item.expires,
    )
    _log_finished(item, "retry", reason=reason, countdown=round(countdown, 3))
    return RETRIED, reason


def _log_finished(item: BatchItem, outcome: Any, **fields: Any) -> None:
    kwargs = item.kwargs
    log.info(
        "task.finished",
        task_id=item.task_id,
        task=DEBIT_TASK,
        idempotency_key=kwargs.get("idempotency_key"),
        clerk_user_id=kwargs.get("clerk_user_id"),
        operation=kwargs.get("operation"),
        outcome=outcome,
        **fields,
    )


# `usage.debit`'s Strategy (worker.usage.tasks.DEBIT_STRATEGY names it).
debit_batching_strategy = batching_strategy(
    apply_batch, max_batch=MAX_BATCH, max_held_per_process=MAX_HELD_PER_PROCESS, sole_queue=USAGE_QUEUE
)
