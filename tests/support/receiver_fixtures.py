"""Fixtures of the receiver tests (import them into a test module to use them).

The receiver's broker here is the run's scratch Redis database, not its broker database: the
session-scoped `celery_worker` fixture, once some earlier test started it, consumes the
`webhooks` queue of the broker database, and would take the messages these tests inspect.
The `redis_client` fixture empties the scratch database before and after every test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from models.settings import Settings
from receiver.app import EXTENSION, create_app
from tests.support.databases import settings_copy
from tests.support.receiver_support import QueuedTask, queued_tasks


@pytest.fixture
def receiver_settings(settings: Settings, redis_urls: dict[str, str]) -> Settings:
    return settings_copy(settings, redis_url=redis_urls["scratch"])


@contextmanager
def receiver_apps(base: Settings) -> Iterator[Callable[..., Flask]]:
    """Build receiver apps from `base`, optionally with settings changed; close them all at
    the end (their engines, producers and Redis clients)."""
    apps: list[Flask] = []

    def make(**changes: Any) -> Flask:
        app = create_app(settings_copy(base, **changes))
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            app.extensions[EXTENSION].close()


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
