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
