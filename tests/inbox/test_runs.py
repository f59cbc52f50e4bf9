"""Runs of `webhooks.process`: counted when they start, a run that died is a crash, a poison row
ends in the dead letter, a failure at COMMIT is a retry."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from celery.signals import task_retry
from sqlalchemy import text, update

from models.inbox import WebhookInbox
from tests.support.celery_worker import WorkerProcess
from tests.support.databases import libpq_url
from tests.support.inbox import inbox_row, payload, process, store
from worker.inbox.runs import MAX_CRASHES

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"


def _users(factory) -> int:
    with factory() as session:
        return session.scalar(text('SELECT count(*) FROM "User"'))


def _as_if_runs_died(factory, inbox_id: int, crashes: int) -> None:
    """What `crashes` earlier runs that died, the latest just now, leave on the row."""
    with factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(attempts=crashes + 1, crashes=crashes, running_since=text("now()"))
        )


def test_a_run_that_died_is_counted_as_a_crash_by_the_next_run(session_factory):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    _as_if_runs_died(session_factory, inbox_id, crashes=0)  # one run started and never ended
    assert process(inbox_id)["status"] == "processed"
    row = inbox_row(session_factory, inbox_id)
    assert (row.attempts, row.crashes, row.running_since) == (2, 1, None)


def test_a_row_whose_runs_keep_dying_is_dead_lettered_instead_of_run_again(session_factory):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    _as_if_runs_died(session_factory, inbox_id, crashes=MAX_CRASHES - 1)
    assert process(inbox_id) == {"inbox_id": inbox_id, "status": "failed"}
    row = inbox_row(session_factory, inbox_id)
    assert (row.status, row.crashes, row.running_since) == ("failed", MAX_CRASHES, None)
    assert row.last_error == (
        f"dead letter: {MAX_CRASHES} runs died mid-task (killed, out of memory or over the time limit)"
    )
    assert _users(session_factory) == 0  # not run again
    assert process(inbox_id) == {"inbox_id": inbox_id, "status": "failed"}  # a late copy changes nothing


def _hold_sync_state_lock(settings) -> psycopg.Connection:
    conn = psycopg.connect(libpq_url(settings.database_url.get_secret_value()))
    conn.execute("INSERT INTO ingest.user_sync_state (clerk_user_id, last_updated_at_ms) VALUES (%s, 0)", (CLERK_ID,))
    conn.commit()
    conn.execute("SELECT 1 FROM ingest.user_sync_state WHERE clerk_user_id = %s FOR UPDATE", (CLERK_ID,))
    return conn


@pytest.mark.celery_worker
def test_a_poison_row_that_kills_its_pool_process_ends_in_the_dead_letter(producer, session_factory, settings):
    """Each run of the row kills its own pool process mid-task (tests/inbox/poison_plugin.py);
    `task_reject_on_worker_lost` puts the message back every time. The starts counted in their
    own transactions end it: dead-lettered after MAX_CRASHES runs died, and the worker goes on."""
    poison = store(session_factory, "clerk", payload("clerk/user.created"))
    healthy = store(session_factory, "clerk", {"type": "session.created", "data": {}})
    holder = _hold_sync_state_lock(settings)  # keeps each run busy until the kill
    worker = WorkerProcess(
        producer,
        queues="poison-test",
        concurrency=1,
        env={"POISON_INBOX_IDS": str(poison), "DB_LOCK_TIMEOUT_MS": "60000"},
        extra_args=("--include=tests.inbox.poison_plugin",),
    )
    try:
        worker.start()
        for inbox_id in (poison, healthy):
            producer.send_task("webhooks.process", kwargs={"inbox_id": inbox_id}, queue="poison-test")
        deadline = time.monotonic() + 90
        while inbox_row(session_factory, poison).status == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
        row = inbox_row(session_factory, poison)
        assert (row.status, row.crashes) == ("failed", MAX_CRASHES), (row.status, row.crashes, row.last_error)
        assert "runs died mid-task" in row.last_error
        deadline = time.monotonic() + 30
        while inbox_row(session_factory, healthy).status == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert inbox_row(session_factory, healthy).status == "ignored"  # the worker went on
    finally:
        holder.close()
        worker.stop()
    assert _users(session_factory) == 0


def test_a_failure_at_commit_is_retried_not_dead_lettered(session_factory, engine):
    """A deferred trigger fails the first COMMIT of a user row with a serialization failure (as
    a dropped connection or a concurrent transaction would): the task retries and the row ends
    processed, with its effect once."""
    # A sequence counts the commits tried: nextval is not undone by the rollback.
    ddl = """
        CREATE SEQUENCE public.commits_tried;
        CREATE FUNCTION public.fail_commit_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('public.commits_tried') = 1 THEN
                RAISE EXCEPTION 'commit failed' USING ERRCODE = 'serialization_failure';
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER fail_commit_once AFTER INSERT ON "User"
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.fail_commit_once();
    """
    with engine.begin() as conn:
        conn.exec_driver_sql(ddl)
    try:
        inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
        assert process(inbox_id)["status"] == "processed"
        row = inbox_row(session_factory, inbox_id)
        assert (row.status, row.attempts, row.crashes) == ("processed", 2, 0)
        assert _users(session_factory) == 1
        with session_factory() as session:
            assert session.scalar(text("SELECT last_value FROM public.commits_tried")) == 2  # failed, then committed
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                'DROP TRIGGER fail_commit_once ON "User"; DROP FUNCTION public.fail_commit_once();'
                "DROP SEQUENCE public.commits_tried;"
            )


def test_rows_whose_retries_keep_running_out_are_re_driven_ever_more_slowly(session_factory):
    from worker.inbox.runs import record_exhausted

    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    waits = []
    for chains in (1, 2, 3, 4, 12):
        with session_factory.begin() as session:
            session.execute(update(WebhookInbox).where(WebhookInbox.id == inbox_id).values(attempts=9 * chains))
            record_exhausted(session, inbox_id, TimeoutError("database busy"), runs_per_chain=9)
            waits.append(
                session.scalar(text(f"SELECT enqueued_at - now() FROM ingest.webhook_inbox WHERE id = {inbox_id}"))
            )
    # Before the pending age starts to count: 0, 1, 3, 7 minutes ... at most an hour.
    assert [round(wait.total_seconds()) for wait in waits] == [0, 60, 180, 420, 3600]
    row = inbox_row(session_factory, inbox_id)
    assert (row.status, row.running_since) == ("pending", None)
    assert row.last_error == "TimeoutError: database busy (retries exhausted: re-driven by the sweeper)"


def test_a_run_is_counted_and_committed_before_its_work(session_factory, settings):
    """The start (attempts, running_since) is committed on its own before the handler runs: seen
    from another connection while the run waits inside its work, so a run that dies there is
    counted. It ends cleared, with the work committed."""
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    holder = _hold_sync_state_lock(settings)  # the run waits in its work (the user's version upsert)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(process, inbox_id)
        try:
            deadline = time.monotonic() + 30
            while (row := inbox_row(session_factory, inbox_id)).running_since is None:
                assert time.monotonic() < deadline and not run.done(), "the run's start was not committed"
                time.sleep(0.05)
            assert (row.status, row.attempts, row.crashes) == ("pending", 1, 0)
            assert _users(session_factory) == 0  # the work has not committed
        finally:
            holder.close()
        assert run.result(timeout=30)["status"] == "processed"
    row = inbox_row(session_factory, inbox_id)
    assert (row.status, row.attempts, row.crashes, row.running_since) == ("processed", 1, 0, None)
    assert _users(session_factory) == 1


def test_a_dead_pooled_connection_costs_a_retry_not_the_event(session_factory, engine):
    """The worker's pool does not test connections before use (no pre-ping). Every connection it
    holds is cut (PostgreSQL restarted, a network cut): the next run's first statement fails, the
    pool is invalidated, the task retries on fresh connections and applies the row once."""
    assert process(store(session_factory, "clerk", payload("clerk/user.created")))["status"] == "processed"
    with engine.connect() as admin:  # the worker's connections now sit in its pool
        cut = admin.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert cut >= 1
    body = payload("clerk/user.created")
    body["data"]["id"] = "user_after_the_cut"
    inbox_id = store(session_factory, "clerk", body)
    retried: list[str] = []

    def count_retry(reason: BaseException | None = None, **_: object) -> None:
        retried.append(type(getattr(reason, "exc", reason)).__name__)  # a Retry carries its cause

    task_retry.connect(count_retry)
    try:
        assert process(inbox_id)["status"] == "processed"
    finally:
        task_retry.disconnect(count_retry)
    assert retried == ["OperationalError"]  # the cut connection, found by the first statement
    row = inbox_row(session_factory, inbox_id)
    assert (row.status, row.crashes, row.running_since) == ("processed", 0, None)
    assert _users(session_factory) == 2
