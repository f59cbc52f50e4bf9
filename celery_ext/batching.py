"""Batches of Celery messages: held by the worker's main process, handed to a pool process as one
job, then acked (or requeued) one by one.

Celery's default strategy does the message handling (expiry, revocation, ETA) and hands each
ready request to a `Batcher`, which starts a pool job with what is held (or its share of it) as soon
as a pool process is free (at most `max_batch`). Two kinds of job: `batching_strategy(apply_batch, ...)`
runs the caller's function on the whole batch (one `(outcome, detail)` report per message, acted
on by `settle`); `traced_batching_strategy(...)` runs each message as its own task, through
Celery's own trace, and settles each as Celery settles a task run alone. Why: docs/design.md.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from celery import Celery, Task, current_app
from celery.app.trace import fast_trace_task, trace_task_ret
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from celery.worker.state import task_ready, task_reserved
from celery.worker.strategy import default as default_strategy
from kombu.transport.virtual import QoS as VirtualQoS

log = structlog.get_logger(__name__)

# What a pool job reports for each message of its batch; the main process acts on it.
SUCCEEDED, RETRIED, FAILED, REQUEUE = "succeeded", "retried", "failed", "requeue"
Report = tuple[str, str]

_BATCHERS = "_batching_batchers"  # on the consumer: group -> its Batcher
_BATCHED = "_batching_tasks"  # on the consumer: the names of the tasks whose messages it batches


@dataclass(frozen=True)
class BatchItem:
    """One message as the pool process needs it (picklable)."""

    task_id: str
    kwargs: dict[str, Any]
    retries: int
    expires: datetime | None
    task: str = ""  # the task's name: a batch may hold the messages of several tasks

    @classmethod
    def of(cls, request: Request) -> BatchItem:
        retries = request.request_dict.get("retries") or 0
        return cls(request.id, dict(request.kwargs or {}), retries, request.expires, request.name)


ApplyBatch = Callable[[list[BatchItem]], list[Report]]


@dataclass(frozen=True)
class TracedItem:
    """One message as Celery's pool job for a task run alone takes it (picklable)."""

    task: str
    task_id: str
    request: dict[str, Any]
    body: Any
    content_type: str | None
    content_encoding: str | None

    @classmethod
    def of(cls, request: Request) -> TracedItem:
        return cls(
            request.name,
            request.id,
            request.request_dict,  # what Celery's own pool job gets (`Request.execute_using_pool`)
            request.body,
            request.content_type,
            request.content_encoding,
        )


# A traced job's result for a message it did not run (`trace_each`): requeued.
NOT_RUN = (2, None, 0.0)


def trace_each(items: list[TracedItem]) -> list[tuple[int, Any, float]]:
    """Run each message as its own task, in order (in a pool process): Celery's own trace (the
    task's transaction, retries, stored result), each result what a task run alone returns to the
    main process. After a soft time limit the rest are not run: the job's hard limit is close."""
    fast = getattr(current_app, "use_fast_trace_task", False)  # set up in a worker's pool processes
    trace = fast_trace_task if fast else trace_task_ret  # as Celery's own job (`Request.execute_using_pool`)
    results: list[tuple[int, Any, float]] = []
    for item in items:
        if results and _timed_out(results[-1]):
            results.append(NOT_RUN)
            continue
        request = dict(item.request)  # the trace adds the message's arguments to it
        results.append(trace(item.task, item.task_id, request, item.body, item.content_type, item.content_encoding))
    return results


def _timed_out(result: tuple[int, Any, float]) -> bool:
    failed, retval, _ = result
    return result == NOT_RUN or bool(failed and isinstance(getattr(retval, "exception", None), SoftTimeLimitExceeded))


def settle_traced(request: Request, result: tuple[int, Any, float]) -> None:
    """Ack, retry or fail one message of a traced job as Celery does a task's own pool job."""
    if result == NOT_RUN:
        task_ready(request)
        requeue_first(request)
        return
    request.on_success(result)


@dataclass(frozen=True)
class _JobKind:
    """What a batch's pool job runs and how each of its messages is settled after it."""

    run: Callable[[list[Any]], list[Any]]  # module-level: pickled to the pool
    item: Callable[[Request], Any]
    settle: Callable[[Request, Any], None]
    when_lost: Any  # each message's result when the pool process is lost
    # True: a job takes what waits divided by the pool processes (none waits behind one slow job
    # while another pool process frees up); False: all of it (a batch is one transaction: the
    # bigger, the cheaper each message).
    shared_out: bool


def _settle_report(request: Request, report: Report) -> None:
    settle(request, *report)


def _report_batches(apply_batch: ApplyBatch) -> _JobKind:
    return _JobKind(apply_batch, BatchItem.of, _settle_report, (REQUEUE, ""), shared_out=False)


_TRACED = _JobKind(trace_each, TracedItem.of, settle_traced, NOT_RUN, shared_out=True)


def batching_strategy(
    apply_batch: ApplyBatch, *, max_batch: int, max_held_per_process: int, sole_queue: str, monitor_name: str
) -> Callable[..., Any]:
    """A `Strategy` for the tasks batched together: `apply_batch` (a module-level function: it
    is pickled to the pool) runs each batch, which may hold the messages of every task given
    this strategy. On a worker consuming `sole_queue` alone, the prefetch window grows by one
    for each message held (at most `max_held_per_process` per pool process). Each batch shows in
    Flower as one task named `monitor_name` (`BatchMonitor`)."""
    group = f"{apply_batch.__module__}.{apply_batch.__qualname__}"
    kind = _report_batches(apply_batch)
    return _strategy(
        group, kind, max_batch, max_held=max_held_per_process, sole_queue=sole_queue, monitor_name=monitor_name
    )


def traced_batching_strategy(*, max_batch: int) -> Callable[..., Any]:
    """A `Strategy` whose batches only share a pool job: each message runs as its own task (its
    trace, transaction, retries, result and monitoring events as when run alone), so a batch
    saves the pool round trip per message and changes nothing else. A batch is at most what the
    worker's own prefetch window holds (the window is never widened). One batcher per task."""

    def strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
        group = f"traced:{task.name}"
        return _strategy(group, _TRACED, max_batch, max_held=0, sole_queue="", monitor_name=None)(
            task, app, consumer, **kwargs
        )

    return strategy


def _strategy(
    group: str, kind: _JobKind, max_batch: int, *, max_held: int, sole_queue: str, monitor_name: str | None
) -> Callable[..., Any]:
    def strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
        batchers = consumer.__dict__.setdefault(_BATCHERS, {})
        if group not in batchers:
            batchers[group] = Batcher(consumer, task, kind, max_batch, max_held, sole_queue, monitor_name)
        consumer.__dict__.setdefault(_BATCHED, set()).add(task.name)
        return default_strategy(task, app, _BatchingConsumer(consumer, batchers[group]), **kwargs)

    return strategy


def batching_installed(consumer: Any, task_name: str) -> bool:
    """Whether the worker's consumer built `task_name`'s strategy with `batching_strategy`."""
    return task_name in consumer.__dict__.get(_BATCHED, set())


class _BatchingConsumer:
    """The worker's consumer as Celery's default strategy sees it, except where a ready request
    goes: to the batcher."""

    def __init__(self, consumer: Any, batcher: Batcher) -> None:
        self._consumer = consumer
        self._batcher = batcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def on_task_request(self, request: Request) -> None:
        self._batcher.add(request)

    def apply_eta_task(self, request: Request) -> None:
        """A message whose countdown ended (Celery's own `apply_eta_task`, batched)."""
        task_reserved(request)
        self._batcher.add(request)
        self._consumer.qos.decrement_eventually()


class Batcher:
    """Held requests, handed to the pool as batches while a pool process is free."""

    def __init__(
        self,
        consumer: Any,
        task: Task,
        kind: _JobKind,
        max_batch: int,
        max_held: int,
        sole_queue: str,
        monitor_name: str | None,
    ) -> None:
        self._consumer = consumer  # its `qos` is made after the strategies: read it when used
        self._pool = consumer.pool
        self._task = task
        self._kind = kind
        self._monitor_name = monitor_name
        self._max_batch = max_batch
        self._sole_queue = sole_queue
        self._slots = max(int(getattr(consumer.pool, "limit", 1) or 1), 1)
        self._max_held = max_held * self._slots
        self._waiting: deque[Request] = deque()
        self._running = 0
        self._window_raised: set[str] = set()

    def add(self, request: Request) -> None:
        if request.revoked():  # expired while it waited out a countdown: discarded and announced
            return
        if len(self._window_raised) < self._max_held and self._consumes_sole_queue():
            self._window_raised.add(request.id)
            self._consumer.qos.increment_eventually()
        self._waiting.append(request)
        self._flush()

    def _consumes_sole_queue(self) -> bool:
        task_consumer = self._consumer.task_consumer
        return task_consumer is not None and {queue.name for queue in task_consumer.queues} == {self._sole_queue}

    def _flush(self) -> None:
        while self._waiting and self._running < self._slots:
            share = -(-len(self._waiting) // self._slots) if self._kind.shared_out else len(self._waiting)
            batch = [self._waiting.popleft() for _ in range(min(share, self._max_batch))]
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
        monitor = BatchMonitor(self._consumer, self._monitor_name, batch)

        def accepted(pid: Any, time_accepted: float) -> None:
            monitor.started(pid)
            for request in batch:
                request.on_accepted(pid, time_accepted)

        def answered(results: list[Any]) -> None:
            monitor.succeeded(results)
            self._finish(batch, results)

        def lost(exc_info: Any) -> None:
            error = getattr(exc_info, "exception", None)
            error = getattr(error, "exc", error)  # billiard wraps it in ExceptionWithTraceback
            log.warning("batching.batch_lost", task=self._task.name, size=len(batch), error=type(error).__name__)
            monitor.failed(type(error).__name__)
            self._finish(batch, [self._kind.when_lost] * len(batch))

        self._pool.apply_async(
            self._kind.run,
            args=([self._kind.item(request) for request in batch],),
            accept_callback=accepted,
            callback=answered,
            error_callback=lost,
            timeout=self._task.time_limit or self._task.app.conf.task_time_limit,
            soft_timeout=self._task.soft_time_limit or self._task.app.conf.task_soft_time_limit,
        )
        monitor.received()  # after the job is on its way: monitoring never delays a batch

    def _finish(self, batch: list[Request], results: list[Any]) -> None:
        try:
            for request, result in zip(batch, results, strict=True):
                try:
                    self._kind.settle(request, result)
                except Exception as exc:  # one message's ack must not strand the others' (Redis redelivers it)
                    log.error("batching.settle_failed", task_id=request.id, error=type(exc).__name__)
                self._release(request)
        finally:
            self._running -= 1
            self._flush()

    def _release(self, request: Request) -> None:
        if request.id in self._window_raised:
            self._window_raised.discard(request.id)
            self._consumer.qos.decrement_eventually()


class BatchMonitor:
    """A batch as one task in Flower: task-received (its size and tasks), task-started, then
    task-succeeded with the messages' outcomes counted by their detail (an answer's status),
    or task-failed when the pool process was lost. Three events a batch, none a message."""

    def __init__(self, consumer: Any, name: str | None, batch: list[Request]) -> None:
        # No name: the batch's messages send their own events (a traced batch).
        self._events = getattr(consumer, "event_dispatcher", None) if name else None
        self._id = str(uuid.uuid4())
        self._started = time.monotonic()
        self._name, self._batch = name, batch

    def received(self) -> None:
        if self._events is None:
            return
        tasks = Counter(request.name for request in self._batch)
        self._send("task-received", name=self._name, args=f"({len(self._batch)},)", kwargs=repr(dict(tasks)), retries=0)

    def started(self, pid: Any) -> None:
        self._send("task-started", pid=pid)

    def succeeded(self, reports: list[Report]) -> None:
        if self._events is None:
            return
        outcomes = Counter(detail if outcome == SUCCEEDED else outcome for outcome, detail in reports)
        self._send("task-succeeded", result=repr(dict(outcomes)), runtime=time.monotonic() - self._started)

    def failed(self, error: str) -> None:
        self._send("task-failed", exception=error, traceback="")

    def _send(self, event: str, **fields: Any) -> None:
        if self._events is None or not self._events.enabled:
            return
        try:
            self._events.send(event, uuid=self._id, **fields)
        except Exception as exc:  # monitoring must never cost a batch its messages
            log.warning("batching.event_not_sent", event=event, error=type(exc).__name__)


def settle(request: Request, outcome: str, detail: str) -> None:
    """Ack (or requeue) one message of a finished batch, with the events one task sends."""
    if outcome == SUCCEEDED:
        request.on_success((False, detail, None))  # task_ready, ack, task-succeeded
        return
    task_ready(request)
    if outcome == REQUEUE:
        requeue_first(request)
        return
    request.acknowledge()
    request.send_event("task-retried" if outcome == RETRIED else "task-failed", exception=detail, traceback="")


def requeue_first(request: Request) -> None:
    """Put the message back where it is taken next, as `reject(requeue=True)` does but at the
    consuming end of kombu's Redis list (a rejected message goes to the other end, behind any
    backlog, and may then expire before it is taken again)."""
    message = request.message
    qos = message.channel.qos
    if request.acknowledged or not hasattr(qos, "restore_by_tag"):  # not kombu's Redis transport
        request.reject(requeue=True)
        return
    qos.restore_by_tag(message.delivery_tag, leftmost=False)  # out of the unacked set, RPUSH
    VirtualQoS.ack(qos, message.delivery_tag)  # what the Redis QoS's reject does after restoring
    message._state = "REJECTED"
    request.acknowledged = True
    request.send_event("task-rejected", requeue=True)
