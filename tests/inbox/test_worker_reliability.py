"""At-least-once delivery with exactly-once effects: workers killed mid-task."""

from __future__ import annotations

import os
import signal
import time
import uuid

import psycopg
import pytest
from sqlalchemy import text, update

from models.inbox import WebhookInbox
from tests.support.celery_worker import WorkerProcess
from tests.support.databases import libpq_url
from tests.support.inbox import inbox_row, payload, process, store
from worker.inbox.queue_probe import broker_view

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"


@pytest.fixture
def queue_name():
    return f"reliability-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stalled_task(settings, session_factory, producer, queue_name):
    """A `webhooks.process` run stuck inside its transaction, on a worker of its own queue.

    A second connection holds the row lock the handler needs; the worker waits for it (a long
    DB_LOCK_TIMEOUT_MS here), so the task is mid-flight when the test kills the worker.
    """
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    holder = psycopg.connect(libpq_url(settings.database_url.get_secret_value()))
    holder.execute("INSERT INTO ingest.user_sync_state (clerk_user_id, last_updated_at_ms) VALUES (%s, 0)", (CLERK_ID,))
    holder.commit()
    holder.execute("SELECT 1 FROM ingest.user_sync_state WHERE clerk_user_id = %s FOR UPDATE", (CLERK_ID,))
    worker = WorkerProcess(producer, queues=queue_name, concurrency=1, env={"DB_LOCK_TIMEOUT_MS": "60000"})
    try:
        worker.start()
        producer.send_task("webhooks.process", kwargs={"inbox_id": inbox_id}, queue=queue_name)
        _wait_for_a_lock_waiter(settings)
        yield inbox_id, worker, holder
    finally:  # also when the set-up fails: never leave a worker process behind
        holder.close()
        worker.stop()


def _wait_for_a_lock_waiter(settings, timeout=30):
    # A connection of its own, in autocommit: pg_stat_activity is a snapshot per transaction.
    with psycopg.connect(libpq_url(settings.database_url.get_secret_value()), autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _lock_waiters(conn):
                return
            time.sleep(0.1)
    raise AssertionError("the task never reached the lock")


def _lock_waiters(conn) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()[0]


def _wait_until_processed(factory, inbox_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inbox_row(factory, inbox_id).status == "processed":
            return
        time.sleep(0.2)
    raise AssertionError(f"inbox row {inbox_id} is {inbox_row(factory, inbox_id).status}")


def _wait_until_not_held(settings, inbox_id, timeout=30):
    deadline = time.monotonic() + timeout
    while inbox_id in broker_view(settings.redis_url.get_secret_value()).held_ids:
        assert time.monotonic() < deadline, f"inbox row {inbox_id} still held"
        time.sleep(0.2)


def _effects(factory) -> tuple[int, int]:
    with factory() as session:
        return tuple(
            session.execute(
                text('SELECT (SELECT count(*) FROM "User"), (SELECT count(*) FROM ingest.credit_ledger)')
            ).one()
        )


def test_pool_child_killed_mid_task_is_redelivered_and_applied_once(stalled_task, session_factory):
    inbox_id, worker, holder = stalled_task
    [child] = worker.pool_children()
    os.kill(child, signal.SIGKILL)  # task_reject_on_worker_lost: the message goes back to the queue
    holder.rollback()  # release the lock: the redelivered task can now finish
    _wait_until_processed(session_factory, inbox_id)
    assert _effects(session_factory) == (1, 1)
    row = inbox_row(session_factory, inbox_id)
    assert (row.attempts, row.crashes, row.running_since) == (2, 1, None)  # the killed run counted
    assert process(inbox_id)["status"] == "processed"  # yet another copy: still one effect
    assert _effects(session_factory) == (1, 1)


def test_whole_worker_killed_mid_task_is_recovered_by_the_sweep(
    stalled_task, session_factory, celery_worker, producer, queue_name, settings
):
    inbox_id, worker, holder = stalled_task
    worker.kill()  # the message stays unacked in Redis until its visibility timeout
    holder.rollback()
    restarted = WorkerProcess(producer, queues=queue_name, concurrency=1)
    restarted.start()
    try:
        with session_factory.begin() as session:  # make the row older than the sweep threshold
            session.execute(
                update(WebhookInbox)
                .where(WebhookInbox.id == inbox_id)
                .values(enqueued_at=text("now() - interval '5 minutes'"))
            )
        # The killed worker's report of what it held expires first (REPORT_TTL): until then the
        # sweeper counts its message as still held.
        _wait_until_not_held(settings, inbox_id)
        assert producer.send_task("inbox.sweep").get(timeout=30) == {"requeued": 1}
        _wait_until_processed(session_factory, inbox_id)
    finally:
        restarted.stop()
    assert _effects(session_factory) == (1, 1)
    assert process(inbox_id)["status"] == "processed"  # the stale message, redelivered at last
    assert _effects(session_factory) == (1, 1)
