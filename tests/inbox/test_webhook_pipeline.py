"""The inbox pipeline: a real worker processes rows; transient errors retry and end in the dead
letter; the sweep recovers rows whose message was lost."""

from __future__ import annotations

import time
import uuid

import psycopg
from sqlalchemy import select, text, update

from messaging.ingest_message import IngestSigner
from models.inbox import WebhookInbox
from models.locks import inbox_row_lock
from tests.conftest import INGEST_TEST_KEY
from tests.support.databases import libpq_url
from tests.support.inbox import inbox_row, payload, process, store
from worker.inbox.runs import MAX_CRASHES
from worker.inbox.tasks import PROCESS_MAX_RETRIES

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"


def _wait_for_status(factory, inbox_id, wanted=("processed", "ignored", "failed", "unmatched"), timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = inbox_row(factory, inbox_id)
        if row.status in wanted:
            return row
        time.sleep(0.1)
    raise AssertionError(f"inbox row {inbox_id} still {row.status}")


def test_worker_processes_an_enqueued_row(celery_worker, producer, session_factory):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    result = producer.send_task("webhooks.process", kwargs={"inbox_id": inbox_id})
    assert result.get(timeout=30) == {"inbox_id": inbox_id, "status": "processed"}
    row = inbox_row(session_factory, inbox_id)
    assert row.processed_at is not None and row.attempts == 1


def test_a_message_delivered_twice_concurrently_has_one_effect(celery_worker, producer, session_factory, session):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    results = [producer.send_task("webhooks.process", kwargs={"inbox_id": inbox_id}) for _ in range(4)]
    # Copies that found another run holding the row tried again later and found it processed.
    assert [r.get(timeout=60)["status"] for r in results] == ["processed"] * 4
    assert session.scalar(text("SELECT count(*) FROM ingest.credit_ledger")) == 1
    assert inbox_row(session_factory, inbox_id).attempts == 1


def test_a_copy_that_finds_the_row_busy_tries_again_later_and_applies_it_once(
    celery_worker, producer, session_factory, settings
):
    """Another run holds the row (its lock, as a run in progress would) while a copy runs: the
    copy is not dropped (the other run may fail and need it); it tries again shortly, and once
    the row is free it applies it, once."""
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    holder = psycopg.connect(libpq_url(settings.database_url.get_secret_value()))
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (inbox_row_lock(inbox_id),))
        copy = producer.send_task("webhooks.process", kwargs={"inbox_id": inbox_id})
        deadline = time.monotonic() + 30
        while copy.state != "RETRY" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert copy.state == "RETRY"  # found it busy: a retry is due, nothing applied
        row = inbox_row(session_factory, inbox_id)
        assert (row.status, row.attempts, row.processed_at) == ("pending", 0, None)
        assert _effects(session_factory) == (0, 0)
    finally:
        holder.close()  # the lock goes with the connection
    assert copy.get(timeout=30) == {"inbox_id": inbox_id, "status": "processed"}  # the same copy
    assert _effects(session_factory) == (1, 1)
    assert inbox_row(session_factory, inbox_id).attempts == 1
    assert process(inbox_id)["status"] == "processed"  # yet another copy: still one effect
    assert _effects(session_factory) == (1, 1)


def _effects(factory) -> tuple[int, int]:
    """Users and ledger entries: what processing user.created once adds (1, 1)."""
    with factory() as session:
        users, entries = session.execute(
            text('SELECT (SELECT count(*) FROM "User"), (SELECT count(*) FROM ingest.credit_ledger)')
        ).one()
    return users, entries


def test_webhooks_ingest_stores_then_processes(celery_worker, producer, session_factory):
    body = payload("clerk/user.created")
    delivery = {"source": "clerk", "external_id": "msg_ingest", "event_type": "user.created", "payload": body}
    first, again = (str(uuid.uuid4()) for _ in range(2))
    signer = IngestSigner([INGEST_TEST_KEY])  # as the receiver signs it
    sent = producer.send_task("webhooks.ingest", kwargs=signer.message(first, delivery), task_id=first)
    assert sent.get(timeout=30)["status"] == "accepted"
    sent = producer.send_task("webhooks.ingest", kwargs=signer.message(again, delivery), task_id=again)
    assert sent.get(timeout=30) == {"status": "duplicate"}
    with session_factory() as session:
        inbox_id = session.scalar(select(WebhookInbox.id).where(WebhookInbox.external_id == "msg_ingest"))
    assert _wait_for_status(session_factory, inbox_id).status == "processed"


def test_sweep_reenqueues_pending_rows_older_than_the_threshold(celery_worker, producer, session_factory):
    old = store(session_factory, "clerk", payload("clerk/user.created"))  # its message was "lost"
    fresh = store(session_factory, "clerk", {"type": "session.created", "data": {}})
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox).where(WebhookInbox.id == old).values(enqueued_at=text("now() - interval '5 minutes'"))
        )
    assert producer.send_task("inbox.sweep").get(timeout=30) == {"requeued": 1}
    assert _wait_for_status(session_factory, old).status == "processed"
    assert inbox_row(session_factory, fresh).status == "pending"


def _hold_sync_state_lock(settings):
    """Another transaction holding the row the handler must lock: the worker's lock_timeout
    (DB_LOCK_TIMEOUT_MS) turns the wait into a transient error."""
    conn = psycopg.connect(libpq_url(settings.database_url.get_secret_value()))
    conn.execute("INSERT INTO ingest.user_sync_state (clerk_user_id, last_updated_at_ms) VALUES (%s, 0)", (CLERK_ID,))
    conn.commit()
    conn.execute("SELECT 1 FROM ingest.user_sync_state WHERE clerk_user_id = %s FOR UPDATE", (CLERK_ID,))
    return conn


def test_transient_errors_retry_then_wait_for_the_sweeper_not_the_dead_letter(session_factory, settings):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    holder = _hold_sync_state_lock(settings)
    try:
        # Start at the second-to-last retry: one retry, then the last try fails too.
        result = process(inbox_id, retries=PROCESS_MAX_RETRIES - 1)
    finally:
        holder.close()
    assert isinstance(result, Exception)
    row = inbox_row(session_factory, inbox_id)
    # Not a dead letter: the database answered but the row was locked, which passes. It waits,
    # pending, for the sweeper's slow re-drive; the next try (here, by hand) applies it.
    assert (row.status, row.attempts, row.running_since) == ("pending", 2, None)
    assert row.last_error.startswith("OperationalError") and "lock timeout" in row.last_error
    assert "retries exhausted" in row.last_error
    assert row.enqueued_at > row.last_attempt_at  # due later: a slow backoff
    with session_factory() as session:
        assert session.scalar(text('SELECT count(*) FROM "User"')) == 0  # the effect rolled back
    assert process(inbox_id)["status"] == "processed"


def test_a_payload_that_can_never_succeed_is_dead_lettered_at_once(session_factory):
    inbox_id = store(session_factory, "clerk", {"type": "user.created", "data": {"email_addresses": []}})
    assert isinstance(process(inbox_id), Exception)
    row = inbox_row(session_factory, inbox_id)
    assert (row.status, row.attempts, row.running_since) == ("failed", 1, None)
    assert row.last_error == "PermanentError: data.id is missing"


def test_a_failed_row_can_be_replayed_with_a_fresh_start(session_factory):
    from worker.inbox.replay import requeue

    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    with session_factory.begin() as session:  # dead-lettered after its runs kept dying
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(status="failed", crashes=MAX_CRASHES, last_error="dead letter: 4 runs died mid-task")
        )
    with session_factory.begin() as session:
        session.info["after_commit"] = []  # no broker in this test: run it here instead
        assert requeue(session, [inbox_id]) == [inbox_id]
    assert (inbox_row(session_factory, inbox_id).crashes, inbox_row(session_factory, inbox_id).last_error) == (0, None)
    assert process(inbox_id)["status"] == "processed"
    assert inbox_row(session_factory, inbox_id).attempts == 1
