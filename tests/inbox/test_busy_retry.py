"""When `webhooks.process` tries again (docs/design.md "Retries"). A copy that finds another run
holding its row tries again 2-4 s later, never sooner (it would spin on the lock) nor later, and
is never dropped; no retry waits longer than the sweeper's pending age. Seen on a real worker:
each try leaves a retry scheduled (an ETA message the worker holds), and the test reads its ETA
from the worker itself."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import psycopg
import pytest

from messaging.celery_config import PROCESS_WEBHOOK_TASK
from models.locks import inbox_row_lock
from tests.support.celery_worker import WorkerProcess
from tests.support.databases import libpq_url
from tests.support.inbox import clerk_user_event, inbox_row, payload, store

pytestmark = pytest.mark.celery_worker

BUSY_LOW, BUSY_HIGH = 2.0, 4.0


def _scheduled_eta(producer, worker_name: str, task_id: str) -> datetime | None:
    """The ETA of the retry the worker holds for `task_id`, if it holds one."""
    replies = producer.control.inspect(destination=[worker_name], timeout=2).scheduled() or {}
    for entry in replies.get(worker_name, []):
        if entry["request"]["id"] == task_id:
            return datetime.fromisoformat(entry["eta"])
    return None


def _next_eta(producer, worker_name: str, task_id: str, after: datetime | None, timeout: float = 60) -> datetime:
    """Wait until the worker holds a retry of `task_id` due later than `after`; its ETA, read as
    soon as it is seen (so the retry was made before `seen`, returned too)."""
    deadline = time.monotonic() + timeout
    while True:
        eta = _scheduled_eta(producer, worker_name, task_id)
        if eta is not None and (after is None or eta > after):
            return eta
        assert time.monotonic() < deadline, "the busy copy left no retry on the worker"
        time.sleep(0.05)


def test_a_copy_that_finds_its_row_busy_tries_again_2_to_4_seconds_later(
    celery_worker, producer, session_factory, settings
):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    with psycopg.connect(libpq_url(settings.database_url.get_secret_value())) as other_run:
        other_run.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (inbox_row_lock(inbox_id),))
        result = producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": inbox_id})
        first = _next_eta(producer, celery_worker.name, result.id, after=None)
        first_seen = datetime.now(first.tzinfo)
        # The second busy try runs at `first` or later: its countdown alone separates the ETAs.
        second = _next_eta(producer, celery_worker.name, result.id, after=first)
        second_seen = datetime.now(second.tzinfo)
        other_run.rollback()  # the other run ends without finishing the row

    assert (second - first).total_seconds() >= BUSY_LOW, second - first
    # Each retry was made before the test saw it: its ETA is at most 4 s past that.
    assert (first - first_seen).total_seconds() <= BUSY_HIGH
    assert (second - second_seen).total_seconds() <= BUSY_HIGH
    # Not dropped: a later copy takes the row once it is free.
    assert result.get(timeout=60)["status"] == "processed"
    assert inbox_row(session_factory, inbox_id).status == "processed"


def test_no_retry_waits_longer_than_the_pending_age(producer, session_factory, settings):
    """Late retries back off up to a minute, but never past the sweeper's pending age (here 3 s):
    a row whose fault has ended is tried again within the sweeper's bound, and the sweeper
    leaves it alone meanwhile (the worker holds its retry)."""
    pending_age = 3.0
    queue = f"retries-{uuid.uuid4().hex[:8]}"
    users = [f"user_late_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    rows = [store(session_factory, "clerk", clerk_user_event("user.created", user, 1)) for user in users]
    env = {"SWEEP_PENDING_AFTER_SECONDS": str(pending_age), "DB_LOCK_TIMEOUT_MS": "100"}
    worker = WorkerProcess(producer, queues=queue, concurrency=1, env=env)
    with psycopg.connect(libpq_url(settings.database_url.get_secret_value())) as holder:
        for user in users:  # each run waits for its user's row, then fails (lock timeout): transient
            holder.execute(
                "INSERT INTO ingest.user_sync_state (clerk_user_id, last_updated_at_ms) VALUES (%s, 0)", (user,)
            )
        holder.commit()
        holder.execute("SELECT 1 FROM ingest.user_sync_state WHERE clerk_user_id = ANY(%s) FOR UPDATE", (users,))
        try:
            worker.start()
            # The sixth retry would wait up to 64 s (backoff 2, 4, ... capped at 60, full jitter).
            sent = [
                producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": row}, queue=queue, retries=6)
                for row in rows
            ]
            for result in sent:
                eta = _next_eta(producer, worker.name, result.id, after=None)
                seen = datetime.now(eta.tzinfo)
                assert (eta - seen).total_seconds() <= pending_age, (eta, seen)
            holder.rollback()
            for result in sent:
                assert result.get(timeout=30)["status"] == "processed"
        finally:
            holder.rollback()
            worker.stop()
    assert [inbox_row(session_factory, row).status for row in rows] == ["processed"] * 3
