"""200 only when durable: with PostgreSQL down, a delivery may wait in Redis (200 `queued`) only
when that Redis persists every write before answering it (append-only file fsynced `always`, no
eviction); otherwise 503, so the provider keeps it and retries, and the log says why. Read
again before every queued delivery and on every /readyz. Real redis-servers, one per configuration."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import redis

from tests.support.receiver_support import (
    asaas_headers,
    down_database_url,
    fallback_entries,
    inbox_rows,
    payload_bytes,
    queued_tasks,
)
from tests.support.servers import private_redis

BODY = payload_bytes("asaas/PAYMENT_CONFIRMED")


def _post(app):
    return app.test_client().post("/webhooks/asaas", data=BODY, headers=asaas_headers())


def _queued(url: str) -> list[str]:
    """What waits in that Redis for the workers: the fallback store's deliveries (by source and
    type) and the `webhooks` queue's tasks (a nudge to drain goes to `maintenance`)."""
    client = redis.Redis.from_url(url)
    try:
        entries = [json.loads(entry["request"]) for entry in fallback_entries(client)]
        tasks = [task.task for task in queued_tasks(client)]
        return [f"{entry['source']} {entry['event_type']}" for entry in entries] + tasks
    finally:
        client.close()


def test_a_redis_without_persistence_gets_a_503_and_the_log_says_why(make_app, session_factory, redis_client, caplog):
    """The shared test Redis runs with `--save "" --appendonly no`, as CI starts it."""
    app = make_app(database_url=down_database_url())  # its broker: the shared Redis
    with caplog.at_level(logging.WARNING, logger="receiver"):
        response = _post(app)
    assert response.status_code == 503
    assert response.json["error"] == "unavailable"
    assert "webhook.unavailable source=asaas reason=broker_not_durable detail=appendonly is no" in caplog.text
    assert queued_tasks(redis_client) == [] and fallback_entries(redis_client) == []
    assert inbox_rows(session_factory) == []


def test_a_redis_with_an_append_only_file_fsynced_always_gets_200_queued(
    make_app, session_factory, durable_redis_url, durable_redis
):
    response = _post(make_app(database_url=down_database_url(), redis_url=durable_redis_url))
    assert response.status_code == 200
    assert response.json == {"status": "queued"}
    assert _queued(durable_redis_url) == ["asaas PAYMENT_CONFIRMED"]


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"appendonly": "yes", "maxmemory-policy": "allkeys-lru"}, "maxmemory-policy is allkeys-lru"),
        ({"appendonly": "yes", "appendfsync": "no"}, "appendfsync is no"),
        # everysec: a crash loses up to a second of writes Redis had already answered.
        ({"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}, "appendfsync is everysec"),
        ({"appendonly": "no", "save": "3600 1"}, "RDB snapshots only, save '3600 1'"),
    ],
    ids=["evicting", "no-fsync", "fsync-every-second", "snapshots-only"],
)
def test_a_redis_that_may_lose_messages_gets_a_503(make_app, session_factory, caplog, options, why):
    with private_redis(**options) as url:
        app = make_app(database_url=down_database_url(), redis_url=url)
        with caplog.at_level(logging.WARNING, logger="receiver"):
            response = _post(app)
        assert response.status_code == 503
        assert why in caplog.text
        assert _queued(url) == []


@pytest.fixture(scope="module")
def managed_url():
    """A Redis that refuses CONFIG, as some managed services do."""
    with private_redis(appendonly="yes", rename_command=("CONFIG", "")) as url:
        yield url


class TestRedisThatRefusesConfig:
    """A managed Redis may refuse CONFIG: nothing can be known, so no 200 without the operator's
    word (REDIS_DURABLE=yes)."""

    def test_by_default_it_gets_a_503(self, make_app, session_factory, managed_url, caplog):
        with caplog.at_level(logging.WARNING, logger="receiver"):
            response = _post(make_app(database_url=down_database_url(), redis_url=managed_url))
        assert response.status_code == 503
        assert "Redis refused CONFIG GET" in caplog.text
        assert _queued(managed_url) == []

    def test_with_redis_durable_yes_it_gets_200_queued(self, make_app, session_factory, managed_url):
        app = make_app(database_url=down_database_url(), redis_url=managed_url, redis_durable="yes")
        try:
            response = _post(app)
            assert (response.status_code, response.json) == (200, {"status": "queued"})
            assert _queued(managed_url) == ["asaas PAYMENT_CONFIRMED"]
        finally:
            redis.Redis.from_url(managed_url).flushdb()


def test_redis_durable_no_never_queues(make_app, session_factory, durable_redis_url, durable_redis):
    response = _post(make_app(database_url=down_database_url(), redis_url=durable_redis_url, redis_durable="no"))
    assert response.status_code == 503
    assert _queued(durable_redis_url) == []


@pytest.fixture
def fsync(durable_redis) -> Iterator[None]:
    """The durable Redis's `appendfsync`, which the test may change: always again afterwards."""
    yield
    durable_redis.config_set("appendfsync", "always")


def test_durability_is_read_again_before_each_queued_delivery(
    make_app, session_factory, durable_redis_url, durable_redis, fsync
):
    """An operator changes Redis's persistence while the receiver runs: the next delivery sees it
    (read at start-up only, the second answer would still be a 200)."""
    app = make_app(database_url=down_database_url(), redis_url=durable_redis_url)
    answers = [_post(app).status_code]
    durable_redis.config_set("appendfsync", "everysec")
    answers.append(_post(app).status_code)
    durable_redis.config_set("appendfsync", "always")
    answers.append(_post(app).status_code)
    assert answers == [200, 503, 200]
    assert _queued(durable_redis_url) == ["asaas PAYMENT_CONFIRMED"] * 2


def test_durability_is_read_again_on_every_readyz(
    make_app, session_factory, durable_redis_url, durable_redis, fsync, caplog
):
    app = make_app(redis_url=durable_redis_url)  # start-up reads it: durable
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="receiver"):
        durable_redis.config_set("appendfsync", "everysec")
        assert client.get("/readyz").status_code == 200  # PostgreSQL and Redis answer: ready
        assert "redis.durability durable=no reason=appendfsync is everysec (always needed)" in caplog.text
        caplog.clear()
        durable_redis.config_set("appendfsync", "always")
        assert client.get("/readyz").status_code == 200
        assert "redis.durability durable=yes reason=appendonly yes, appendfsync always" in caplog.text


def test_start_up_and_readyz_log_what_the_broker_is(make_app, session_factory, caplog):
    with caplog.at_level(logging.INFO, logger="receiver"):
        app = make_app()  # start-up reads it
        assert "redis.durability durable=no reason=appendonly is no" in caplog.text
        caplog.clear()
        assert app.test_client().get("/readyz").status_code == 200
    # Logged again only when it changes; /readyz itself says nothing about it.
    assert "redis.durability" not in caplog.text
