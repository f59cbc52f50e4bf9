"""The Celery tasks other services call (queue `usage`): debits, refunds, storage tracking.

Each run is one transaction (TransactionalTask); transient errors retry with a short backoff. A
request for a user the Clerk webhook has not created yet (or a refund of a debit still in the
queue) retries for about `wait_for_user` seconds before it answers; a debit never runs past its
deadline, and the `task_revoked` handler below stores `expired` for a debit message Celery
discarded unrun. The contract: docs/usage-api.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypedDict

from celery import Task
from celery.signals import task_revoked, worker_ready
from sqlalchemy.exc import SQLAlchemyError

from celery_ext.batching import batching_installed
from messaging.celery_config import USAGE_QUEUE
from worker import database
from worker.celery_app import app
from worker.errors import TRANSIENT_ERRORS
from worker.task_base import TransactionalTask
from worker.usage import debits, refunds, requests, storage

log = logging.getLogger(__name__)

DEBIT_TASK = "usage.debit"
DEBIT_STRATEGY = "worker.usage.batches:debit_batching_strategy"

USER_WAIT_SECONDS = 300
MAX_USER_WAIT_SECONDS = 900
MAX_RETRY_DELAY = 30


class UsageTaskOptions(TypedDict):
    autoretry_for: tuple[type[BaseException], ...]
    max_retries: int
    retry_backoff: int
    retry_backoff_max: int
    retry_jitter: bool


# Every task here is bound to a TransactionalTask (`base=TransactionalTask, bind=True`) with these.
TASK_OPTIONS: UsageTaskOptions = {
    "autoretry_for": TRANSIENT_ERRORS,
    # Enough for the longest wait for a user (about 34 tries of up to 30 s for 900 s).
    "max_retries": 40,
    "retry_backoff": 1,
    "retry_backoff_max": MAX_RETRY_DELAY,
    "retry_jitter": True,
}


def retry_delay(tries: int) -> int:
    return min(2**tries, MAX_RETRY_DELAY)


def waited(tries: int) -> int:
    """Seconds spent in countdowns before try number `tries` (0-based)."""
    return sum(retry_delay(n) for n in range(tries))


def user_wait_over(tries: int, wait_for_user: float) -> bool:
    """Whether try number `tries` (0-based) is the last one a missing user may be waited for."""
    return waited(tries) >= min(max(wait_for_user, 0), MAX_USER_WAIT_SECONDS)


def user_wait_countdown(tries: int, not_after: float | None) -> float:
    """How long try number `tries` waits before the next, never past the deadline `not_after`
    (the try at the deadline answers `expired`, or its message expires)."""
    countdown: float = retry_delay(tries)
    if not_after is not None:
        countdown = min(countdown, max(not_after - time.time(), 0))
    return countdown


def run_or_wait(
    task: TransactionalTask[..., dict[str, Any]],
    wait_for_user: float,
    attempt: Callable[[bool], dict[str, Any]],
    not_after: float | None = None,
) -> dict[str, Any]:
    """Run `attempt(final)`; while the wait is not over (final=False), a `NotYetKnown` from it
    becomes a retry of the task after the next backoff delay, never later than `not_after`."""
    tries = task.request.retries or 0
    try:
        return attempt(user_wait_over(tries, wait_for_user))
    except requests.NotYetKnown:
        raise task.retry(countdown=user_wait_countdown(tries, not_after)) from None


# A worker consumes debits in batches (worker.usage.batches, its `Strategy`); the function below
# is what one debit does alone (`debit.apply()`, eager calls) and the rules both paths share.
# No per-debit monitoring events (task-received/started/succeeded for Flower): publishing them
# was a third of the worker's main process per debit, and the main process handles every debit
# message itself. Each debit's outcome is its `task.finished` log line and its stored answer.
@app.task(
    name=DEBIT_TASK, base=TransactionalTask, bind=True, Strategy=DEBIT_STRATEGY, send_events=False, **TASK_OPTIONS
)
def debit(
    task: TransactionalTask[..., dict[str, Any]],
    clerk_user_id: str,
    operation: str,
    idempotency_key: str,
    cost: int | None = None,
    details: dict[str, Any] | None = None,
    wait_for_user: float = USER_WAIT_SECONDS,
    not_after: float | None = None,
) -> dict[str, Any]:
    request = debits.DebitRequest(clerk_user_id, operation, idempotency_key, cost, details, not_after)
    return run_or_wait(
        task, wait_for_user, lambda final: debits.debit(task.session, request, final=final), not_after=not_after
    )


@worker_ready.connect
def check_debit_batching(sender: Any = None, **_: Any) -> None:
    """On a worker consuming `usage`, debits must go through their batching strategy: say so,
    loudly when Celery did not build it (a Celery upgrade that no longer calls `Strategy`)."""
    consumer = sender
    queues = {queue.name for queue in getattr(getattr(consumer, "task_consumer", None), "queues", ())}
    if USAGE_QUEUE not in queues:
        return
    if batching_installed(consumer, DEBIT_TASK):
        log.info("debits.batching_installed task=%s", DEBIT_TASK)
    else:
        log.critical("debits.batching_not_installed task=%s: every debit runs alone, one transaction each", DEBIT_TASK)


@task_revoked.connect
def store_expired_debit(sender: Task | None = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    """A debit message Celery discarded because its `expires` passed never runs: store
    `expired` on its key anyway (in a transaction of its own, in the worker's main process), so
    `usage.outcome` and a later send of the same key answer what happened."""
    if not expired or getattr(sender, "name", None) != DEBIT_TASK or request is None:
        return
    try:
        expired_debit = debits.DebitRequest.from_task_kwargs(request.kwargs or {})
    except (KeyError, TypeError):
        log.warning("usage.debit expired without the arguments of a debit: nothing to store")
        return
    try:
        with database.session_factory().begin() as session:
            debits.expire(session, expired_debit)
    except SQLAlchemyError as exc:
        # Nothing was taken either way; only the stored answer is missing (outcome: unknown).
        log.error("could not store the expiry of a debit: %s", type(exc).__name__)


@app.task(name="usage.refund", base=TransactionalTask, bind=True, **TASK_OPTIONS)
def refund(
    task: TransactionalTask[..., dict[str, Any]],
    clerk_user_id: str,
    idempotency_key: str,
    refund_of: str,
    credits: int | None = None,
    details: dict[str, Any] | None = None,
    wait_for_user: float = USER_WAIT_SECONDS,
) -> dict[str, Any]:
    request = refunds.RefundRequest(clerk_user_id, idempotency_key, refund_of, credits, details)
    return run_or_wait(task, wait_for_user, lambda final: refunds.refund(task.session, request, final=final))


@app.task(name="usage.outcome", base=TransactionalTask, bind=True, **TASK_OPTIONS)
def outcome(task: TransactionalTask[..., dict[str, Any]], idempotency_key: str) -> dict[str, Any]:
    return requests.outcome(task.session, idempotency_key)


@app.task(name="storage.record", base=TransactionalTask, bind=True, **TASK_OPTIONS)
def record_storage(
    task: TransactionalTask[..., dict[str, Any]],
    clerk_user_id: str,
    url: str,
    pathname: str,
    name: str,
    size: int,
    content_type: str | None = None,
    provider: str = storage.DEFAULT_PROVIDER,
    wait_for_user: float = USER_WAIT_SECONDS,
) -> dict[str, Any]:
    record = storage.StorageRecord(clerk_user_id, url, pathname, name, size, content_type, provider)
    return run_or_wait(task, wait_for_user, lambda final: storage.record_object(task.session, record, final=final))


@app.task(name="storage.delete", base=TransactionalTask, bind=True, **TASK_OPTIONS)
def delete_storage(
    task: TransactionalTask[..., dict[str, Any]],
    storage_object_id: str | None = None,
    pathname: str | None = None,
    provider: str = storage.DEFAULT_PROVIDER,
) -> dict[str, Any]:
    return storage.delete_object(
        task.session, storage_object_id=storage_object_id, pathname=pathname, provider=provider
    )
