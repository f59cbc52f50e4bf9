"""The fallback store keeps a delivery the receiver queued (PostgreSQL down, 200 `queued`) until a
drain has committed it to the inbox: a drain that finds PostgreSQL still down leaves it, a worker
SIGKILLed between taking it and committing leaves it to be reclaimed, the same delivery queued
twice is one row, a forged entry stores nothing. Real PostgreSQL, Redis and Celery workers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from sqlalchemy.orm import sessionmaker

from messaging.celery_config import DRAIN_FALLBACK_TASK, create_producer
from messaging.fallback_store import DRAIN_GROUP, NUDGE_KEY, STREAM, FallbackStore
from messaging.ingest_message import IngestSigner
from models.db import make_engine
from tests.conftest import INGEST_TEST_KEY
from tests.support import drain_hold_plugin
from tests.support.billing import PRO_CREDITS, SIGNUP, add_pro_plan, add_user, asaas_event, balance
from tests.support.celery_worker import WorkerProcess
from tests.support.databases import settings_copy
from tests.support.receiver_support import (
    asaas_headers,
    clerk_headers,
    down_database_url,
    inbox_rows,
    json_body,
    payload_bytes,
    receiver_apps,
)
from worker.inbox.fallback_drain import Drained, consumer_name, drain

SIGNER = IngestSigner([INGEST_TEST_KEY])
USER_CREATED = payload_bytes("clerk/user.created")


def _pending(client: redis.Redis) -> int:
    return int(client.xpending(STREAM, DRAIN_GROUP)["pending"])


@pytest.fixture
def queue_while_down(settings, session_factory):
    """Post deliveries to a receiver that cannot reach PostgreSQL, on the Redis at `redis_url`
    (the operator's REDIS_DURABLE=yes: the test Redis does not persist); each must be 200 queued."""
    with receiver_apps(settings) as make_app:

        def post(redis_url: str, body: bytes, headers: dict[str, str], path: str = "/webhooks/clerk") -> None:
            app = make_app(database_url=down_database_url(), redis_url=redis_url, redis_durable="yes")
            response = app.test_client().post(path, data=body, headers=headers)
            assert (response.status_code, response.json) == (200, {"status": "queued"})

        yield post


# --- the drain itself, run here on the scratch Redis (no worker reads it) ---------------------------


@pytest.fixture
def store(redis_client) -> FallbackStore:
    return FallbackStore(redis_client)


def _drain(store: FallbackStore, sessions: sessionmaker, claim_idle: float = 3600) -> tuple[Drained, list[int]]:
    enqueued: list[int] = []
    return drain(store, SIGNER, sessions, enqueued.append, claim_idle), enqueued


def test_while_postgresql_is_down_the_drain_leaves_the_entry_then_stores_it_once_it_is_back(
    settings, redis_urls, redis_client, store, session_factory, queue_while_down
):
    queue_while_down(redis_urls["scratch"], USER_CREATED, clerk_headers(USER_CREATED))
    down = make_engine(settings_copy(settings, database_url=down_database_url()))
    try:
        result, enqueued = _drain(store, sessionmaker(down))
    finally:
        down.dispose()
    assert result.database_down and enqueued == [] and inbox_rows(session_factory) == []
    assert redis_client.xlen(STREAM) == 1 and _pending(redis_client) == 0  # kept, not even taken

    result, enqueued = _drain(store, session_factory)  # PostgreSQL is back

    [row] = inbox_rows(session_factory)
    assert (result.stored, result.duplicates, result.database_down) == (1, 0, False)
    assert enqueued == [row.id]  # `webhooks.process` for the new row, after the commit
    assert redis_client.xlen(STREAM) == 0 and _pending(redis_client) == 0


def test_the_same_delivery_queued_twice_is_one_row(redis_urls, redis_client, store, session_factory, queue_while_down):
    headers = clerk_headers(USER_CREATED)  # one svix-id: the provider re-sent it
    for _ in range(2):
        queue_while_down(redis_urls["scratch"], USER_CREATED, headers)
    assert redis_client.xlen(STREAM) == 2

    result, enqueued = _drain(store, session_factory)

    assert (result.stored, result.duplicates) == (1, 1)
    assert [row.external_id for row in inbox_rows(session_factory)] == [headers["svix-id"]]
    assert len(enqueued) == 1 and redis_client.xlen(STREAM) == 0


FORGED = asaas_event("PAYMENT_CONFIRMED", event_id="evt_forged&1", id="pay_forged")
DELIVERY = {"source": "asaas", "external_id": FORGED["id"], "event_type": "PAYMENT_CONFIRMED", "payload": FORGED}
GENUINE = SIGNER.entry(DELIVERY)


@pytest.mark.parametrize(
    "fields",
    [
        {"service": "receiver", "request": json.dumps(DELIVERY)},  # unsigned
        IngestSigner(["a key the receiver does not hold"]).entry(DELIVERY),
        {**GENUINE, "signature": GENUINE["signature"][:-2] + "xx"},
        {**GENUINE, "request": GENUINE["request"].replace("PAYMENT_CONFIRMED", "PAYMENT_RECEIVED")},
        {**GENUINE, "delivery_id": "another id"},  # replayed under another id
        {**SIGNER.message(GENUINE["delivery_id"], DELIVERY), "delivery_id": GENUINE["delivery_id"]},  # a Celery one
        {**GENUINE, "payload": json.dumps(FORGED)},  # an extra field
    ],
    ids=["unsigned", "other-key", "tampered-signature", "tampered-request", "replayed", "ingest-message", "extra"],
)
def test_a_forged_entry_is_removed_and_stores_nothing(redis_client, store, session_factory, fields):
    redis_client.xadd(STREAM, fields)

    result, enqueued = _drain(store, session_factory)

    assert (result.refused, result.stored, enqueued) == (1, 0, [])
    assert inbox_rows(session_factory) == [] and redis_client.xlen(STREAM) == 0


def test_entries_a_dead_reader_took_are_reclaimed_once_idle_long_enough(
    redis_urls, redis_client, store, session_factory, queue_while_down
):
    queue_while_down(redis_urls["scratch"], USER_CREATED, clerk_headers(USER_CREATED))
    store.ensure_group()
    assert len(store.take("reader-that-dies:1", 10, claim_idle_seconds=3600)) == 1

    result, _ = _drain(store, session_factory, claim_idle=3600)  # it may still be working on it
    assert (result.stored, _pending(redis_client), inbox_rows(session_factory)) == (0, 1, [])

    result, _ = _drain(store, session_factory, claim_idle=0)  # idle longer than the claim time
    assert result.stored == 1 and len(inbox_rows(session_factory)) == 1
    assert redis_client.xlen(STREAM) == 0 and _pending(redis_client) == 0


def test_entries_this_process_took_before_are_taken_again_first(
    redis_urls, redis_client, store, session_factory, queue_while_down
):
    """PostgreSQL failed in the middle of a batch: what this process had taken is still its own."""
    queue_while_down(redis_urls["scratch"], USER_CREATED, clerk_headers(USER_CREATED))
    store.ensure_group()
    assert len(store.take(consumer_name(), 10, claim_idle_seconds=3600)) == 1

    result, _ = _drain(store, session_factory, claim_idle=3600)

    assert result.stored == 1 and len(inbox_rows(session_factory)) == 1
    assert redis_client.xlen(STREAM) == 0 and _pending(redis_client) == 0


# --- with real workers -------------------------------------------------------------------------------


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.1)
    return found


@pytest.mark.celery_worker
def test_a_delivery_queued_while_postgresql_was_down_is_stored_and_processed(
    celery_worker, settings, session_factory, queue_while_down
):
    """The receiver's nudge alone brings it in: no beat, no drain sent by the test."""
    add_pro_plan(session_factory)
    add_user(session_factory)
    broker = redis.Redis.from_url(settings.redis_url.get_secret_value())
    broker.delete(NUDGE_KEY)  # a previous test's nudge may still be in force
    queue_while_down(settings.redis_url.get_secret_value(), json_body(FORGED), asaas_headers(), "/webhooks/asaas")

    def asaas_rows():
        return [row for row in inbox_rows(session_factory) if row.source == "asaas"]

    _wait_for(lambda: [row for row in asaas_rows() if row.status == "processed"], "stored and processed")

    assert [row.external_id for row in asaas_rows()] == ["evt_forged&1"]
    assert balance(session_factory) == SIGNUP + PRO_CREDITS
    assert broker.xlen(STREAM) == 0


@pytest.fixture
def scratch_workers(settings, redis_urls, redis_client) -> Iterator[tuple[list[WorkerProcess], Celery]]:
    """Workers of the test's own on the scratch Redis (broker and fallback store), stopped at the
    end; the scratch producer pings them and sends their tasks."""
    scratch = settings_copy(settings, redis_url=redis_urls["scratch"])
    producer = create_producer(scratch)
    workers: list[WorkerProcess] = []
    yield workers, producer
    for worker in workers:
        worker.kill()
    producer.close()


def test_a_worker_sigkilled_between_taking_an_entry_and_committing_it_loses_nothing(
    redis_urls, redis_client, session_factory, queue_while_down, scratch_workers
):
    workers, producer = scratch_workers
    env = {"REDIS_URL": redis_urls["scratch"], "FALLBACK_CLAIM_IDLE_SECONDS": "1"}
    headers = clerk_headers(USER_CREATED)
    queue_while_down(redis_urls["scratch"], USER_CREATED, headers)
    holding = WorkerProcess(
        producer,
        queues="webhooks,maintenance",
        concurrency=1,
        env=env,
        extra_args=(f"--include={drain_hold_plugin.__name__}",),
    )
    workers.append(holding)
    holding.start()
    producer.send_task(DRAIN_FALLBACK_TASK)

    assert redis_client.blpop([drain_hold_plugin.HELD], timeout=60), "no drain reached the INSERT"
    assert _pending(redis_client) == 1 and inbox_rows(session_factory) == []  # taken, not committed
    holding.kill()

    fresh = WorkerProcess(producer, queues="webhooks,maintenance", concurrency=1, env=env)
    workers.append(fresh)
    fresh.start()
    # The dead reader's entry is reclaimed once idle for FALLBACK_CLAIM_IDLE_SECONDS.
    _wait_for(
        lambda: producer.send_task(DRAIN_FALLBACK_TASK).get(timeout=30)["stored"] or inbox_rows(session_factory),
        "reclaimed and stored",
    )
    [row] = _wait_for(lambda: [row for row in inbox_rows(session_factory) if row.status == "processed"], "processed")
    assert row.external_id == headers["svix-id"] and len(inbox_rows(session_factory)) == 1
    assert redis_client.xlen(STREAM) == 0 and _pending(redis_client) == 0
