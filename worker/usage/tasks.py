"""The Celery tasks services send (queue `usage`), each a signed message (worker.usage.messages):
debits (applied in batches: worker.usage.batches), refunds, outcomes, settling a debit whose
caller stopped waiting, and storage tracking. A task's answer is stored signed, after its commit,
by this code (Celery stores nothing: `ignore_result`); a message that does not verify gets none.
The rules of each answer: docs/usage-api.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.signals import celeryd_after_setup, task_revoked, worker_ready

from celery_ext.batching import BatchItem, batching_installed
from messaging.celery_config import (
    CAPTURE_TASK,
    DEBIT_TASK,
    DELETE_STORAGE_TASK,
    EXPIRE_HOLDS_TASK,
    HOLD_TASK,
    OUTCOME_TASK,
    RECORD_STORAGE_TASK,
    REFUND_TASK,
    RELEASE_TASK,
    SETTLE_TASK,
    USAGE_QUEUE,
)
from models.settings import process_settings
from worker.celery_app import app
from worker.errors import TRANSIENT_ERRORS
from worker.task_base import TransactionalTask
from worker.usage import batches, debits, holds, refunds, requests, storage
from worker.usage.messages import Refused, UsageMessage, open_message, refuse
from worker.usage.retries import TASK_OPTIONS, USER_WAIT_SECONDS, user_wait_countdown, user_wait_over

log = logging.getLogger(__name__)

BATCHING_STRATEGY = "worker.usage.batches:debit_batching_strategy"
# Tasks with a deadline: a message Celery discards as expired is settled (`usage.settle`).
DEADLINE_TASKS = {DEBIT_TASK, HOLD_TASK}
# How long `usage.settle` waits between tries while the deadline has not passed by PostgreSQL's clock.
SETTLE_RETRY_SECONDS = 1.0
# The hold sweep retries a transient error at once, as inbox.sweep does; the next sweep is near.
RETRY_TRANSIENT: dict[str, Any] = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": 1}


class UsageTask(TransactionalTask[..., dict[str, Any] | None]):
    """A signed usage task: the message is opened before the transaction (refused: nothing
    runs), the function gets the verified message, and its answer is stored signed after the
    commit. A retry (a user not known yet) stores nothing and re-sends the same signed message."""

    abstract = True
    ignore_result = True
    # The message's kwargs (service, request, signature) are not the function's parameters: Celery
    # must not check them against it (its retry re-sends them as they came).
    typing = False

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        message = self.open(kwargs)
        if message is None:
            return None
        answer = super().__call__(message)
        if answer is not None:
            store_answer(self, message, answer)
        return answer

    def open(self, kwargs: dict[str, Any]) -> UsageMessage | None:
        task_id = self.request.id or ""
        try:
            return open_message(self.name, task_id, kwargs)
        except Refused as exc:
            refuse(self.name, task_id, kwargs, str(exc))
            return None


def store_answer(task: Task, message: UsageMessage, answer: dict[str, Any]) -> None:
    """Store the signed answer. A failure is logged, not raised: the work is committed, and a
    caller that gets no answer asks again (`usage.settle`, `usage.outcome`)."""
    batches.store_signed(task, [(message, answer)])


class SettleTask(UsageTask):
    """`usage.settle` carries another task's signed message (`task`, `task_id` and its fields):
    that message is what is opened, and the answer goes to that task id."""

    abstract = True

    def open(self, kwargs: dict[str, Any]) -> UsageMessage | None:
        task, task_id = kwargs.get("task"), kwargs.get("task_id")
        fields = {name: kwargs.get(name) for name in ("service", "request", "signature")}
        if task not in DEADLINE_TASKS or not isinstance(task_id, str):
            refuse(self.name, self.request.id or "", kwargs, "not a message of a task with a deadline")
            return None
        try:
            return open_message(task, task_id, fields)
        except Refused as exc:
            refuse(self.name, self.request.id or "", kwargs, str(exc))
            return None


def run_or_wait(task: UsageTask, message: UsageMessage, attempt: Any, not_after: float | None = None) -> Any:
    """Run `attempt(final)`; while the wait for a user is not over, `NotYetKnown` becomes a retry."""
    tries = task.request.retries or 0
    wait_for_user = message.args.get("wait_for_user", USER_WAIT_SECONDS)
    try:
        return attempt(user_wait_over(tries, wait_for_user))
    except requests.NotYetKnown as exc:
        # RETRY for Flower and `AsyncResult.state` (Celery stores none for a task ignoring results).
        task.backend.mark_as_retry(task.request.id or "", exc)
        raise task.retry(countdown=user_wait_countdown(tries, not_after)) from None


def invalid_request(message: UsageMessage) -> dict[str, Any]:
    return requests.error("invalid_request", f"the arguments of {message.task} are missing or of the wrong type")


# Debits, holds, captures and releases are consumed in batches (their Strategy); run as a task
# (`apply()`, eager calls) each is a batch of one. No per-message monitoring events: each has its
# `task.finished` log line.
BATCHED_TASKS = (DEBIT_TASK, HOLD_TASK, CAPTURE_TASK, RELEASE_TASK)


def run_alone(task: Task, **message: Any) -> None:
    """One message as a batch of one."""
    request = task.request
    batches.apply_batch([BatchItem(request.id or "", dict(message), request.retries or 0, None, task.name)])


for _name in BATCHED_TASKS:
    app.task(name=_name, bind=True, Strategy=BATCHING_STRATEGY, send_events=False, ignore_result=True, **TASK_OPTIONS)(
        run_alone
    )


@app.task(name=EXPIRE_HOLDS_TASK, base=TransactionalTask, bind=True, max_retries=2, **RETRY_TRANSIENT)
def expire_holds(task: TransactionalTask[..., dict[str, int]]) -> dict[str, int]:
    """Release the open holds past their `expires_at` (beat, every sweep interval)."""
    return {"expired": len(holds.expire_due(task.session))}


@celeryd_after_setup.connect
def require_usage_service_keys(instance: Any = None, **_: Any) -> None:
    """A worker consuming `usage` without USAGE_SERVICE_KEYS would refuse every message: it does
    not start. (SystemExit: Celery logs and ignores a signal handler's Exception.)"""
    consumed = set(instance.app.amqp.queues.consume_from or ()) if instance is not None else set()
    if USAGE_QUEUE in consumed and not process_settings().usage_keys:
        raise SystemExit(
            "configuration error: USAGE_SERVICE_KEYS is not set (name:key of each service that sends usage tasks)"
        )


@worker_ready.connect
def check_debit_batching(sender: Any = None, **_: Any) -> None:
    """On a worker consuming `usage`, debits must go through their batching strategy: say so,
    loudly when Celery did not build it (a Celery upgrade that no longer calls `Strategy`)."""
    consumer = sender
    queues = {queue.name for queue in getattr(getattr(consumer, "task_consumer", None), "queues", ())}
    if USAGE_QUEUE not in queues:
        return
    for name in BATCHED_TASKS:
        if batching_installed(consumer, name):
            log.info("debits.batching_installed task=%s", name)
        else:
            log.critical("debits.batching_not_installed task=%s: each runs alone, one transaction each", name)


@task_revoked.connect
def settle_expired_message(sender: Task | None = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    """A debit Celery discarded because its `expires` passed never runs: hand its signed message
    to `usage.settle` (one message sent; the database work runs in a pool process), which answers
    its task id from what PostgreSQL holds for the key."""
    if not expired or sender is None or sender.name not in DEADLINE_TASKS or request is None:
        return
    fields = {name: (request.kwargs or {}).get(name) for name in ("service", "request", "signature")}
    try:
        app.send_task(SETTLE_TASK, kwargs={"task": sender.name, "task_id": request.id, **fields}, ignore_result=True)
    except Exception as exc:  # the caller settles it itself when no answer comes
        log.error("could not send usage.settle for %s: %s", request.id, type(exc).__name__)


@app.task(name=SETTLE_TASK, base=SettleTask, bind=True, **TASK_OPTIONS)
def settle(task: UsageTask, message: UsageMessage) -> dict[str, Any] | None:
    """The final answer of a debit or a hold (its own signed message, `task` and `task_id`,
    embedded): what PostgreSQL holds for its key, or `expired` once its deadline has passed by
    PostgreSQL's clock. Stored under that task id; tried again until then."""
    try:
        request = batches.request_of(message)
    except (KeyError, TypeError):
        return invalid_request(message)
    assert isinstance(request, debits.DebitRequest | holds.HoldRequest)
    answer = debits.settle(task.session, request)
    if answer is None and request.not_after is not None:
        # PostgreSQL's clock has not reached the deadline yet (clocks differ, or a caller asked
        # early): try again once it should have.
        left = min(max(request.not_after - time.time(), 0.0), 60.0)
        raise task.retry(countdown=left + SETTLE_RETRY_SECONDS, max_retries=None)
    return answer or requests.answer("unknown")


@app.task(name=REFUND_TASK, base=UsageTask, bind=True, **TASK_OPTIONS)
def refund(task: UsageTask, message: UsageMessage) -> dict[str, Any]:
    try:
        request = refunds.RefundRequest.from_args(message.args, message.service, message.task_id)
    except (KeyError, TypeError):
        return invalid_request(message)
    result: dict[str, Any] = run_or_wait(
        task, message, lambda final: refunds.refund(task.session, request, final=final)
    )
    return result


@app.task(name=OUTCOME_TASK, base=UsageTask, bind=True, **TASK_OPTIONS)
def outcome(task: UsageTask, message: UsageMessage) -> dict[str, Any]:
    key = message.args.get("idempotency_key")
    if not isinstance(key, str):
        return invalid_request(message)
    return requests.outcome(task.session, key, message.service)


@app.task(name=RECORD_STORAGE_TASK, base=UsageTask, bind=True, **TASK_OPTIONS)
def record_storage(task: UsageTask, message: UsageMessage) -> dict[str, Any]:
    try:
        record = storage.StorageRecord.from_args(message.args)
    except (KeyError, TypeError):
        return invalid_request(message)
    result: dict[str, Any] = run_or_wait(
        task, message, lambda final: storage.record_object(task.session, record, final=final)
    )
    return result


@app.task(name=DELETE_STORAGE_TASK, base=UsageTask, bind=True, **TASK_OPTIONS)
def delete_storage(task: UsageTask, message: UsageMessage) -> dict[str, Any]:
    args = message.args
    return storage.delete_object(
        task.session,
        storage_object_id=args.get("storage_object_id"),
        pathname=args.get("pathname"),
        provider=args.get("provider") or storage.DEFAULT_PROVIDER,
    )
