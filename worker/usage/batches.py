"""`usage.debit` messages applied in batches: many debits, one transaction, one pool job.

Services keep sending `usage.debit` by name, one message per debit, and each caller's
`AsyncResult.get()` gets its own answer. The worker's main process holds the debit messages it
receives and hands them to a pool process as one batch as soon as a pool process is free
(`DebitBatcher`); the pool process applies them in one transaction (`debits.debit_many`), stores
each answer in the result backend, and only then are the messages acked. So:

- No flush interval: a debit that finds a free pool process leaves at once, alone (one request
  at a time costs what one task costs). Debits only pile up while every pool process is busy, and
  the next free process takes all of them (up to MAX_BATCH): the busier the worker, the bigger
  the batches.
- At least once: a message is acked after the commit and after its answer was stored (or its
  re-send published). A pool process that dies before answering (SIGKILL, out of memory, the
  hard time limit) gets every message of its batch requeued at once (rejected with requeue, as
  Celery's `task_reject_on_worker_lost` does for one task), never left unacked until Redis's
  visibility timeout. A batch redelivered after its commit answers `duplicate`, as one task does.
- A debit whose user is not known yet leaves nothing written (`debit_many`); it is re-sent on its
  own after the batch committed (same task id, retries + 1, the countdown of the per-task path,
  never past its deadline) and its message acked only once the re-send was published. Its
  state is RETRY meanwhile, as for a task that retried.
- A batch that fails as a whole (a deadlock, a lost connection, a failed COMMIT, a bug in one
  request) is rolled back and every debit of it is applied again alone, each in its own
  transaction: a transient error then re-sends that debit with the task's backoff, any other
  error ends that debit alone as FAILURE, as one task would.
- Expiry: Celery's own strategy (used unchanged underneath) discards an expired message as it
  arrives and fires `task_revoked` (which stores `expired` on the key); a re-sent debit waiting
  out its countdown is checked again before it joins a batch; a debit past its `not_after` in
  a batch answers `expired` (`debits.debit`).
- On a worker that consumes `usage` alone, the prefetch window grows by one for each debit held
  here (up to MAX_HELD_PER_PROCESS per pool process), as Celery does for a message waiting for
  its ETA, so a worker with prefetch 1 still gathers big batches. A worker that also consumes
  other queues keeps its configured window: a wider one would also prefetch `webhooks` messages,
  which then wait in that worker instead of in the queue, where the sweeper looks for them (its
  batches are then at most as big as its prefetch). Heavy debit traffic wants a worker of its
  own on `usage` (README, Processes).

Why this and not celery-batches 0.11: it acks acks_late requests in the pool's success callback
and passes no error callback, so a killed pool process leaves its batch unacked until the
visibility timeout (an hour); it flushes on a timer (`flush_interval`) or a count, which adds
up to the interval to every debit at low load; and it skips the checks of Celery's strategy
(expiry, revocation). Fixing that means overriding its strategy, its flush and its apply: all
of it. Here Celery's own strategy does the message handling and this module only decides when a
batch leaves and what happens to its messages.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import structlog
from celery import Celery, Task, states
from celery.backends.redis import RedisBackend
from celery.utils.saferepr import saferepr
from celery.worker.request import Request
from celery.worker.state import task_ready, task_reserved
from celery.worker.strategy import default as default_strategy

from worker import database
from worker.celery_config import USAGE_QUEUE
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

# What a pool process reports for each debit of its batch; the main process acts on it.
SUCCEEDED, RETRIED, FAILED, REQUEUE = "succeeded", "retried", "failed", "requeue"


def batching_strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """The `Strategy` of `usage.debit`: Celery's default strategy, whose ready requests (and
    requests whose countdown ended) go to a `DebitBatcher` instead of one pool job each."""
    batcher = DebitBatcher(consumer, task)
    return default_strategy(task, app, _BatchingConsumer(consumer, batcher), **kwargs)


class _BatchingConsumer:
    """The worker's consumer as Celery's default strategy sees it, except where a ready request
    goes: to the batcher."""

    def __init__(self, consumer: Any, batcher: DebitBatcher) -> None:
        self._consumer = consumer
        self._batcher = batcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def on_task_request(self, request: Request) -> None:
        self._batcher.add(request)

    def apply_eta_task(self, request: Request) -> None:
        """A re-sent debit whose countdown ended (Celery's own `apply_eta_task`, batched)."""
        task_reserved(request)
        self._batcher.add(request)
        self._consumer.qos.decrement_eventually()


@dataclass(frozen=True)
class BatchItem:
    """One debit message as the pool process needs it (picklable)."""

    task_id: str
    kwargs: dict[str, Any]
    retries: int
    expires: datetime | None

    @classmethod
    def of(cls, request: Request) -> BatchItem:
        return cls(request.id, dict(request.kwargs or {}), request.request_dict.get("retries") or 0, request.expires)


class DebitBatcher:
    """Held debit requests, handed to the pool as batches while a pool process is free."""

    def __init__(self, consumer: Any, task: Task) -> None:
        self._consumer = consumer  # its `qos` is made after the strategies: read it when used
        self._pool = consumer.pool
        self._task = task
        self._slots = max(int(getattr(consumer.pool, "limit", 1) or 1), 1)
        self._max_held = MAX_HELD_PER_PROCESS * self._slots
        self._waiting: deque[Request] = deque()
        self._running = 0
        self._window_raised: set[str] = set()

    def add(self, request: Request) -> None:
        if request.revoked():  # expired while it waited out a countdown: discarded and announced
            return
        if len(self._window_raised) < self._max_held and self._consumes_usage_alone():
            self._window_raised.add(request.id)
            self._consumer.qos.increment_eventually()
        self._waiting.append(request)
        self._flush()

    def _consumes_usage_alone(self) -> bool:
        task_consumer = self._consumer.task_consumer
        return task_consumer is not None and {queue.name for queue in task_consumer.queues} == {USAGE_QUEUE}

    def _flush(self) -> None:
        while self._waiting and self._running < self._slots:
            batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), MAX_BATCH))]
            ready = [request for request in batch if not self._discarded(request)]
            if ready:
                self._start(ready)

    def _discarded(self, request: Request) -> bool:
        if request.revoked():
            self._release(request)
            return True
        return False

    def _start(self, batch: list[Request]) -> None:
        self._running += 1

        def accepted(pid: Any, time_accepted: float) -> None:
            for request in batch:
                request.on_accepted(pid, time_accepted)

        def answered(reports: list[tuple[str, str]]) -> None:
            self._finish(batch, reports)

        def lost(exc_info: Any) -> None:
            error = getattr(exc_info, "exception", None)
            error = getattr(error, "exc", error)  # billiard wraps it in ExceptionWithTraceback
            log.warning("debits.batch_lost", size=len(batch), error=type(error).__name__)
            self._finish(batch, [(REQUEUE, "")] * len(batch))

        self._pool.apply_async(
            apply_batch,
            args=([BatchItem.of(request) for request in batch],),
            accept_callback=accepted,
            callback=answered,
            error_callback=lost,
            timeout=self._task.time_limit or self._task.app.conf.task_time_limit,
            soft_timeout=self._task.soft_time_limit or self._task.app.conf.task_soft_time_limit,
        )

    def _finish(self, batch: list[Request], reports: list[tuple[str, str]]) -> None:
        try:
            for request, (outcome, detail) in zip(batch, reports, strict=True):
                try:
                    _settle(request, outcome, detail)
                except Exception as exc:  # one message's ack must not strand the others' (Redis redelivers it)
                    log.error("debits.settle_failed", task_id=request.id, error=type(exc).__name__)
                self._release(request)
        finally:
            self._running -= 1
            self._flush()

    def _release(self, request: Request) -> None:
        if request.id in self._window_raised:
            self._window_raised.discard(request.id)
            self._consumer.qos.decrement_eventually()


def _settle(request: Request, outcome: str, detail: str) -> None:
    """Ack (or requeue) one message of a finished batch, with the events one task sends."""
    if outcome == SUCCEEDED:
        request.on_success((False, detail, None))  # task_ready, ack, task-succeeded
        return
    task_ready(request)
    if outcome == REQUEUE:
        request.reject(requeue=True)
        return
    request.acknowledge()
    request.send_event("task-retried" if outcome == RETRIED else "task-failed", exception=detail, traceback="")


# --- In the pool process ---------------------------------------------------------------------


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


def apply_batch(items: list[BatchItem]) -> list[tuple[str, str]]:
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
    """Store the batch's answers (SUCCESS) in the result backend; False if it failed (the
    messages are then requeued: a rerun answers what the commit stored).

    With Celery's Redis backend, in two round trips for the whole batch instead of two per
    answer (`mark_as_done` reads the key, then writes it): one MGET, then one pipeline of the
    writes Celery's `RedisBackend._set` makes (SET with the result expiry, PUBLISH for a
    waiting `get()`), values built by Celery (`encode_result`, `_get_result_meta`, `encode`).
    As in Celery's `_store_result`, a key that already holds SUCCESS is not overwritten: the
    first answer given for a task id stands. Other backends: `mark_as_done` for each."""
    if not answers:
        return True
    try:
        if not isinstance(backend, RedisBackend):
            for task_id, result in answers:
                backend.mark_as_done(task_id, result)
            return True
        # (Typed as Any: celery-types declares neither `expires` nor `_get_result_meta`.)
        redis_backend: Any = backend
        keys = [redis_backend.get_key_for_task(task_id) for task_id, _ in answers]
        stored = redis_backend.mget(keys)
        expiry = int(redis_backend.expires) if redis_backend.expires else None
        with redis_backend.client.pipeline() as pipe:
            for (task_id, result), key, current in zip(answers, keys, stored, strict=True):
                if current is not None and redis_backend.decode_result(current)["status"] == states.SUCCESS:
                    continue
                meta = redis_backend._get_result_meta(
                    result=redis_backend.encode_result(result, states.SUCCESS),
                    state=states.SUCCESS,
                    traceback=None,
                    request=None,
                )
                meta["task_id"] = task_id
                value = redis_backend.encode(meta)
                pipe.set(key, value, ex=expiry)
                pipe.publish(key, value)
            pipe.execute()
    except Exception as exc:
        log.error("debits.answers_not_stored", size=len(answers), error=type(exc).__name__)
        return False
    return True


def _publish(task: DebitTask, item: BatchItem, outcome: _Outcome, answers_stored: bool) -> tuple[str, str]:
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
            return _resend(task, item, _backoff(task, item.retries), type(outcome.error).__name__)
        task.backend.mark_as_failure(item.task_id, outcome.error)
        _log_finished(item, "failure", error=type(outcome.error).__name__)
        return FAILED, type(outcome.error).__name__
    except Exception as exc:
        log.error("debits.answer_not_stored", task_id=item.task_id, error=type(exc).__name__)
        return REQUEUE, type(exc).__name__


def _resend(task: DebitTask, item: BatchItem, countdown: float, reason: str) -> tuple[str, str]:
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


def _backoff(task: DebitTask, retries: int) -> float:
    """The task's own retry countdown (TransactionalTask.retry_countdown) for try `retries`."""
    task.push_request(retries=retries)
    try:
        return float(task.retry_countdown())
    finally:
        task.pop_request()


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
