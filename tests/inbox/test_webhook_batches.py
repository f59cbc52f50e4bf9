"""The `webhooks.process` messages a worker holds go to a pool process as one job, and each still
runs as its own task: its own transaction, outcome, retry and result (docs/design.md, "Prefetch").
Seen on a real worker with one pool process, so without batches only one task could be active."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.result import AsyncResult

from celery_ext.batching import NOT_RUN, TracedItem, trace_each
from celery_ext.held_messages import held_messages
from messaging.celery_config import PROCESS_WEBHOOK_TASK
from models.locks import inbox_row_lock
from tests.inbox.block_plugin import BLOCK_RELEASE, blocking_worker
from tests.support.celery_worker import WorkerProcess
from tests.support.databases import libpq_url
from tests.support.inbox import clerk_user_event, inbox_row, store

pytestmark = pytest.mark.celery_worker


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
    return found


def _user_created(factory) -> int:
    return store(factory, "clerk", clerk_user_event("user.created", f"user_batch_{uuid.uuid4().hex[:10]}", 1))


def _active(producer: Celery, worker: WorkerProcess) -> list[dict[str, Any]]:
    replies = producer.control.inspect(destination=[worker.name], timeout=2).active() or {}
    return list(replies.get(worker.name, []))


def test_held_messages_share_one_pool_job_and_each_keeps_its_own_outcome(
    settings, session_factory, producer, redis_urls
):
    queue = f"batch-{uuid.uuid4().hex[:8]}"
    blocker, good_a, busy, blocked_mid, good_b = (_user_created(session_factory) for _ in range(5))
    bad = store(session_factory, "clerk", {"type": "user.created", "data": {"email_addresses": []}})
    client = redis.Redis.from_url(redis_urls["broker"])
    client.delete(BLOCK_RELEASE)
    worker = blocking_worker(producer, queue, prefetch=8, blocked=(blocker, blocked_mid))
    other_run = psycopg.connect(libpq_url(settings.database_url.get_secret_value()))
    try:
        worker.start()
        other_run.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (inbox_row_lock(busy),))

        def send(inbox_id: int) -> AsyncResult:
            return producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": inbox_id}, queue=queue)

        first = send(blocker)
        _wait_for(lambda: [t["id"] for t in _active(producer, worker)] == [first.id], "the blocker runs alone")
        batch = [good_a, bad, busy, blocked_mid, good_b]
        sent = {inbox_id: send(inbox_id) for inbox_id in batch}
        held = lambda: {m.kwargs["inbox_id"] for m in held_messages(client, PROCESS_WEBHOOK_TASK)}  # noqa: E731
        _wait_for(lambda: held() >= set(batch), "the worker holds the five messages sent behind the blocker")

        client.rpush(BLOCK_RELEASE, 1)  # the blocker ends; the five go to the pool as one job
        _wait_for(lambda: inbox_row(session_factory, bad).status == "failed", "the bad row fails")
        active = _wait_for(lambda: len(_active(producer, worker)) == 5 and _active(producer, worker), "one job")
        # All five are active at once on the one pool process: one job, run in order. Those
        # before the blocked one have ended, each its own way; the one after it has not started.
        assert {task["id"] for task in active} == {result.id for result in sent.values()}
        assert len({task["worker_pid"] for task in active}) == 1
        assert inbox_row(session_factory, good_a).status == "processed"
        assert (inbox_row(session_factory, bad).attempts, inbox_row(session_factory, bad).last_error) == (
            1,
            "PermanentError: data.id is missing",
        )
        assert (inbox_row(session_factory, busy).status, inbox_row(session_factory, busy).attempts) == ("pending", 0)
        assert (inbox_row(session_factory, good_b).status, inbox_row(session_factory, good_b).attempts) == (
            "pending",
            0,
        )

        client.rpush(BLOCK_RELEASE, 1)
        assert sent[good_b].get(timeout=30) == {"inbox_id": good_b, "status": "processed"}
        assert sent[good_a].get(timeout=30) == {"inbox_id": good_a, "status": "processed"}
        assert sent[bad].state == "FAILURE"
        # The busy copy was retried on its own (2-4 s later) and applies the row once it is free.
        assert sent[busy].state in ("RETRY", "PENDING")
        other_run.rollback()
        assert sent[busy].get(timeout=60) == {"inbox_id": busy, "status": "processed"}
        assert [inbox_row(session_factory, i).attempts for i in (blocker, good_a, busy, blocked_mid, good_b)] == [1] * 5
    finally:
        other_run.close()
        client.rpush(BLOCK_RELEASE, 1, 1)
        worker.stop()
        client.close()


def test_after_a_soft_time_limit_the_rest_of_a_traced_job_is_not_run():
    """The job's hard time limit follows its soft one closely: the messages after the one that
    reached it are handed back (requeued), not started with seconds left."""
    app = Celery(f"traced-{uuid.uuid4().hex[:6]}")  # the current app: trace_each runs its tasks
    ran: list[str] = []

    @app.task(name="traced.ok", bind=True)
    def ok(task: Any) -> str:
        ran.append(task.request.id)
        return "ok"

    @app.task(name="traced.slow")
    def slow() -> None:
        raise SoftTimeLimitExceeded()

    def item(name: str, task_id: str) -> TracedItem:
        return TracedItem(name, task_id, {"id": task_id, "task": name}, ((), {}, {}), None, None)

    results = trace_each([item("traced.ok", "a"), item("traced.slow", "b"), item("traced.ok", "c")])

    assert ran == ["a"]
    assert results[0][0] == 0 and results[1][0] == 1  # succeeded, failed: as Celery's own job reports
    assert isinstance(results[1][1].exception, SoftTimeLimitExceeded)
    assert results[2] == NOT_RUN
