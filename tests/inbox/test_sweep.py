"""The sweeper re-enqueues the pending rows whose message is gone, and only those; it has its own
queue and expires before the next one is due, so it never storms and is never stuck."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from celery.exceptions import TaskRevokedError
from sqlalchemy import text, update

from messaging.celery_config import (
    MAINTENANCE_QUEUE,
    PROCESS_WEBHOOK_TASK,
    WEBHOOKS_QUEUE,
    celery_config,
    create_producer,
    sweep_expiry_seconds,
)
from models.inbox import WebhookInbox
from models.locks import inbox_row_lock
from tests.support.databases import libpq_url, settings_copy
from tests.support.inbox import inbox_row, payload, store
from worker.inbox.queue_probe import oldest_waiting_inbox_id
from worker.inbox.sweep import sweep


def _enqueued_minutes_ago(factory, inbox_id: int, minutes: int) -> None:
    with factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(enqueued_at=text(f"now() - interval '{minutes} minutes'"))
        )


def _sweep(factory, settings, **options) -> tuple[list[int], list]:
    """One pass in a transaction of its own; returns the ids and the messages it would send."""
    with factory.begin() as session:
        ids = sweep(session, settings, **options)
        sent = list(session.info.pop("after_commit", []))
    return ids, sent


def test_only_rows_enqueued_longer_ago_than_the_pending_age_are_swept(session_factory, settings):
    lost = store(session_factory, "clerk", payload("clerk/user.created"))
    fresh = store(session_factory, "clerk", {"type": "session.created", "data": {}})
    _enqueued_minutes_ago(session_factory, lost, 5)
    ids, sent = _sweep(session_factory, settings)
    assert ids == [lost] and sent == [(PROCESS_WEBHOOK_TASK, {"inbox_id": lost})]
    assert inbox_row(session_factory, fresh).status == "pending"
    # Sweeping enqueues the row again: the next passes leave it alone for another pending age.
    assert _sweep(session_factory, settings) == ([], [])


def test_a_replayed_row_whose_message_was_lost_is_swept_after_the_pending_age(session_factory, settings):
    """The old sweeper skipped a row with a recent attempt for 11 minutes; a replayed row kept its
    last attempt. Now only when it was enqueued counts."""
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(attempts=3, last_attempt_at=text("now()"), enqueued_at=text("now() - interval '2 minutes'"))
        )
    assert _sweep(session_factory, settings)[0] == [inbox_id]


def test_a_row_whose_retry_is_due_later_is_left_to_its_retry(session_factory, settings):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(last_attempt_at=text("now() - interval '5 minutes'"), enqueued_at=text("now() + interval '30 s'"))
        )
    assert _sweep(session_factory, settings)[0] == []


def test_a_row_a_run_is_processing_is_not_swept(session_factory, settings):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    _enqueued_minutes_ago(session_factory, inbox_id, 5)
    with psycopg.connect(libpq_url(settings.database_url.get_secret_value())) as run:
        run.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (inbox_row_lock(inbox_id),))
        assert _sweep(session_factory, settings)[0] == []  # the run holds the row
    assert _sweep(session_factory, settings)[0] == [inbox_id]  # that run died: its lock went with it


def test_rows_enqueued_after_the_oldest_waiting_message_are_left_in_the_backlog(session_factory, settings):
    first, second, third = (store(session_factory, "clerk", {"type": "x", "data": {"n": n}}) for n in range(3))
    for minutes, inbox_id in ((30, first), (20, second), (10, third)):
        _enqueued_minutes_ago(session_factory, inbox_id, minutes)
    # The broker still holds the message of `second`: it and `third` are merely waiting.
    assert _sweep(session_factory, settings, oldest_waiting_id=second)[0] == [first]


def test_rows_enqueued_just_before_the_oldest_waiting_message_may_be_behind_it_and_are_left(session_factory, settings):
    """`enqueued_at` is a transaction's start, the message is pushed after the commit: a row whose
    transaction started a moment before the oldest waiting row's may have its message behind that
    one (the storm fault scenario saw one such row re-enqueued). Only rows enqueued more than
    QUEUE_ARRIVAL_SKEW before it are taken for lost."""
    lost, crossed, head = (store(session_factory, "clerk", {"type": "x", "data": {"n": n}}) for n in range(3))
    for seconds, inbox_id in ((603, lost), (600.5, crossed), (600, head)):
        _enqueued_seconds_ago(session_factory, inbox_id, seconds)
    assert _sweep(session_factory, settings, oldest_waiting_id=head)[0] == [lost]


def test_the_probe_finds_the_oldest_process_message_waiting_in_the_broker(settings, redis_urls, redis_client):
    scratch = settings_copy(settings, redis_url=redis_urls["scratch"])
    producer = create_producer(scratch)  # no worker reads this broker
    try:
        assert oldest_waiting_inbox_id(redis_urls["scratch"]) is None  # nothing queued
        producer.send_task("webhooks.ingest", kwargs={"source": "clerk", "external_id": "m", "event_type": "t"})
        for inbox_id in (41, 42, 43):
            producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": inbox_id})
        assert redis_client.llen(WEBHOOKS_QUEUE) == 4
        assert oldest_waiting_inbox_id(redis_urls["scratch"]) == 41
    finally:
        producer.close()
    assert oldest_waiting_inbox_id("redis://127.0.0.1:1/0") is None  # unreadable: sweep without it


def test_a_sweep_expires_before_the_next_is_due_and_has_its_own_queue(settings):
    config = celery_config(settings)
    entry = config["beat_schedule"]["inbox-sweep"]
    assert entry["options"]["expires"] == sweep_expiry_seconds(settings) < settings.sweep_interval_seconds
    assert config["task_routes"]["inbox.*"] == {"queue": MAINTENANCE_QUEUE}


@pytest.mark.celery_worker
def test_an_expired_sweep_is_dropped_by_the_worker(celery_worker, producer):
    result = producer.send_task("inbox.sweep", expires=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)


@pytest.mark.celery_worker
def test_a_sweep_is_not_stuck_behind_a_backlog_of_webhooks(celery_worker, producer, settings, redis_urls):
    """Thousands of webhook messages wait in `webhooks`; a sweep sent after them runs long before
    they are drained, because it waits in a queue of its own."""
    backlog = redis.Redis.from_url(redis_urls["broker"])
    template = None
    try:
        producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": -1}, queue="backlog-template")
        template = backlog.rpop("backlog-template")
        assert template is not None
        backlog.lpush(WEBHOOKS_QUEUE, *([template] * 3000))  # copies of a message for no row
        sweep_result = producer.send_task("inbox.sweep")
        assert sweep_result.get(timeout=30) == {"requeued": 0}
        assert backlog.llen(WEBHOOKS_QUEUE) > 1000  # most of the backlog still waits
    finally:
        backlog.delete(WEBHOOKS_QUEUE, "backlog-template")
        backlog.close()


@pytest.fixture
def sweep_task(monkeypatch, redis_urls, redis_client):
    """`inbox.sweep` run in this process as a worker runs it (its settings read from the
    environment), its probe reading a broker no worker consumes: messages sent there stay queued."""
    from models.settings import process_settings
    from worker.inbox.tasks import sweep_inbox

    monkeypatch.setenv("REDIS_URL", redis_urls["scratch"])
    process_settings.cache_clear()
    yield lambda: sweep_inbox.apply().get()
    process_settings.cache_clear()


def _enqueued_seconds_ago(factory, inbox_id: int, seconds: float) -> None:
    with factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(enqueued_at=text("now() - make_interval(secs => :s)").bindparams(s=seconds))
        )


def test_the_sweep_task_leaves_rows_younger_than_the_pending_age(session_factory, settings, sweep_task):
    """The configured age (60 s by default), not some floor: a row 30 s past it is swept, one
    30 s short of it is left to its message."""
    age = settings.sweep_pending_after_seconds
    young, old = (store(session_factory, "clerk", payload("clerk/user.created")) for _ in range(2))
    _enqueued_seconds_ago(session_factory, young, age - 30)
    _enqueued_seconds_ago(session_factory, old, age + 30)
    assert sweep_task() == {"requeued": 1}
    assert inbox_row(session_factory, old).attempts == 1  # re-enqueued, and run (eagerly here)
    assert inbox_row(session_factory, young).attempts == 0


def test_the_sweep_task_leaves_a_row_whose_message_still_waits_in_the_broker(
    session_factory, settings, sweep_task, redis_urls, redis_client
):
    """Two rows left pending long ago: the message of one is gone, the other's still waits in
    the `webhooks` queue (a real kombu message, behind a backlog). Only the first is swept."""
    gone, waiting = (store(session_factory, "clerk", payload("clerk/user.created")) for _ in range(2))
    _enqueued_minutes_ago(session_factory, gone, 10)
    _enqueued_minutes_ago(session_factory, waiting, 5)
    producer = create_producer(settings_copy(settings, redis_url=redis_urls["scratch"]))
    try:
        producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": waiting})
    finally:
        producer.close()
    assert redis_client.llen(WEBHOOKS_QUEUE) == 1

    assert sweep_task() == {"requeued": 1}
    assert inbox_row(session_factory, gone).attempts == 1
    assert inbox_row(session_factory, waiting).attempts == 0
    assert redis_client.llen(WEBHOOKS_QUEUE) == 1  # its one message, still waiting: no second copy
