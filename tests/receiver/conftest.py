"""Fixtures of the receiver tests.

The receiver's broker here is the run's scratch Redis database, not its broker database: the
session-scoped `celery_worker` fixture, once some earlier test started it, consumes the
`webhooks` queue of the broker database, and would take the messages these tests inspect.
The `redis_client` fixture empties the scratch database before and after every test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from models.settings import Settings
from tests.support.databases import settings_copy
from tests.support.receiver_support import QueuedTask, queued_tasks, receiver_apps
from tests.support.servers import private_redis


@pytest.fixture
def receiver_settings(settings: Settings, redis_urls: dict[str, str]) -> Settings:
    return settings_copy(settings, redis_url=redis_urls["scratch"])


@pytest.fixture
def make_app(receiver_settings, session_factory, redis_client) -> Iterator[Callable[..., Flask]]:
    """Receiver apps on the scratch broker, closed before `session_factory` empties the tables."""
    with receiver_apps(receiver_settings) as make:
        yield make


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def queue(redis_client: redis.Redis) -> Callable[[], list[QueuedTask]]:
    """The `webhooks` queue of the receiver's broker, oldest message first."""
    return lambda: queued_tasks(redis_client)


@pytest.fixture(scope="session")
def durable_redis_url() -> Iterator[str]:
    """A Redis of the run's own configured as production needs it (append-only file fsynced before
    each write is answered, never evicting): the only kind of broker a delivery may wait in."""
    with private_redis(appendonly="yes", appendfsync="always", maxmemory_policy="noeviction") as url:
        yield url


@pytest.fixture
def durable_redis(durable_redis_url) -> Iterator[redis.Redis]:
    """A client of the durable Redis, empty before and after the test."""
    client = redis.Redis.from_url(durable_redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
