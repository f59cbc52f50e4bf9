"""A message a live worker holds (prefetched, waiting for its ETA) counts as still queued: the
sweeper leaves its row alone; once its worker is dead, the row is swept like any lost message."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import redis
from kombu import Connection
from sqlalchemy import text, update

from celery_ext.held_messages import held_messages, live_holder_tags, write_holder_report
from messaging.celery_config import PROCESS_WEBHOOK_TASK, create_producer
from models.inbox import WebhookInbox
from tests.inbox.block_plugin import BLOCK_RELEASE, blocking_worker
from tests.support.databases import settings_copy
from tests.support.inbox import clerk_user_event, inbox_row, store
from worker.inbox.queue_probe import broker_view
from worker.inbox.sweep import sweep

PREFETCH = 4


def _stored_rows(factory, count: int) -> list[int]:
    """`count` Clerk users to create, their rows enqueued long ago (past the pending age)."""
    ids = [
        store(factory, "clerk", clerk_user_event("user.created", f"user_held_{uuid.uuid4().hex[:10]}", 1))
        for _ in range(count)
    ]
    with factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id.in_(ids))
            .values(enqueued_at=text("now() - interval '5 minutes'"))
        )
    return ids


def _sweep(factory, settings, broker_url: str) -> list[int]:
    view = broker_view(broker_url)
    with factory.begin() as session:
        ids = sweep(session, settings, oldest_waiting_id=view.oldest_waiting_id, held_ids=view.held_ids)
        session.info.pop("after_commit", None)  # what it would send: the tests look at the ids
    return ids


def _age_deliveries(client: redis.Redis, seconds: float) -> None:
    """Make every unacked delivery `seconds` old in kombu's index (still far from its visibility
    timeout), so only a live holder's report can keep it "held"."""
    tags = client.zrange("unacked_index", 0, -1)
    if tags:
        client.zadd("unacked_index", {tag: time.time() - seconds for tag in tags}, xx=True)


def _reported(client: redis.Redis) -> bool:
    """Every `webhooks.process` message in `unacked` is named by a live worker's report."""
    tags = {message.delivery_tag for message in held_messages(client, PROCESS_WEBHOOK_TASK)}
    return bool(tags) and tags <= live_holder_tags(client)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def test_a_message_in_kombus_unacked_hash_counts_as_held(session_factory, settings, redis_urls, redis_client):
    """Probe level: real Celery messages, taken by a real kombu consumer (into `unacked`)."""
    scratch = redis_urls["scratch"]
    [held, lost] = _stored_rows(session_factory, 2)
    producer = create_producer(settings_copy(settings, redis_url=scratch))
    try:
        producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": held}, queue="held-probe")
        with Connection(scratch) as connection:
            message = connection.default_channel.basic_get("held-probe", no_ack=False)  # kombu's QoS: into unacked
            assert message is not None
            [in_hash] = held_messages(redis_client, PROCESS_WEBHOOK_TASK)
            assert in_hash.kwargs == {"inbox_id": held}
            # Just delivered: held even before its holder's first report.
            assert broker_view(scratch).held_ids == {held}
            assert _sweep(session_factory, settings, scratch) == [lost]
            # Older than a report's life: held only while a live worker reports holding it.
            _age_deliveries(redis_client, 60)
            assert broker_view(scratch).held_ids == frozenset()
            write_holder_report(redis_client, "probe@test", [in_hash.delivery_tag])
            assert broker_view(scratch).held_ids == {held}
            redis_client.delete("pedro-webhooks:holder:probe@test")  # that worker died: its report expired
            assert broker_view(scratch).held_ids == frozenset()
    finally:
        producer.close()


@pytest.fixture
def held_by_a_worker(settings, session_factory, producer, redis_urls):
    """A worker (1 pool process, prefetch 4) whose first `webhooks.process` run is blocked: it
    holds the 4 messages sent (one running, three prefetched), each delivered long ago."""
    queue = f"held-{uuid.uuid4().hex[:8]}"
    rows = _stored_rows(session_factory, PREFETCH)
    client = redis.Redis.from_url(redis_urls["broker"])
    client.delete(BLOCK_RELEASE)
    worker = blocking_worker(producer, queue, prefetch=PREFETCH, blocked=rows[:1])
    try:
        worker.start()
        for inbox_id in rows:
            producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": inbox_id}, queue=queue)

        def held() -> set[int]:
            return {m.kwargs["inbox_id"] for m in held_messages(client, PROCESS_WEBHOOK_TASK)}

        _wait_for(lambda: held() == set(rows), "the worker holds the four messages")
        assert client.llen(queue) == 0
        _age_deliveries(client, 60)
        yield rows, worker, client
    finally:
        client.rpush(BLOCK_RELEASE, 1)
        worker.stop()
        client.close()


def test_a_live_worker_holding_prefetched_messages_keeps_their_rows_from_the_sweeper(
    held_by_a_worker, settings, session_factory, redis_urls
):
    rows, _worker, client = held_by_a_worker
    broker = redis_urls["broker"]
    _wait_for(lambda: _reported(client), "the worker reports holding them")
    assert _sweep(session_factory, settings, broker) == []
    client.rpush(BLOCK_RELEASE, 1)
    _wait_for(lambda: all(inbox_row(session_factory, i).status == "processed" for i in rows), "all processed")
    # Each ran once: nothing was swept, nothing ran twice.
    assert [inbox_row(session_factory, i).attempts for i in rows] == [1] * PREFETCH
    assert held_messages(client, PROCESS_WEBHOOK_TASK) == []


def test_the_messages_a_killed_worker_held_are_swept_once_its_report_expires(
    held_by_a_worker, settings, session_factory, redis_urls
):
    rows, worker, client = held_by_a_worker
    broker = redis_urls["broker"]
    _wait_for(lambda: _reported(client), "the worker reports holding them")
    assert broker_view(broker).held_ids == set(rows)
    worker.kill()
    # kombu leaves them in `unacked` until the visibility timeout (an hour): nobody holds them now.
    assert {m.kwargs["inbox_id"] for m in held_messages(client, PROCESS_WEBHOOK_TASK)} == set(rows)
    _wait_for(lambda: broker_view(broker).held_ids == frozenset(), "the dead worker's report expires")
    assert sorted(_sweep(session_factory, settings, broker)) == sorted(rows)
    assert _sweep(session_factory, settings, broker) == []  # swept once: enqueued again just now
