"""Test infrastructure: real PostgreSQL, real Redis, a real Celery worker when asked for.

One uniquely named database per test run (per xdist worker), migrated once with Alembic and
dropped at the end. Tests are isolated by emptying every table after each test that touched the
database: rolling back cannot isolate work that a Celery worker process committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from models import migrate
from models.db import make_engine, make_session_factory
from models.settings import Settings, load_settings
from tests.support.celery_worker import WorkerProcess
from tests.support.databases import create_database, drop_database, truncate_all
from tests.support.servers import postgres_admin_url, redis_base_url
from worker.celery_config import create_producer

# Webhook secrets the tests sign with. Test-only values, never used anywhere else.
CLERK_TEST_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXBlZHJvLXdlYmhvb2tz"
ASAAS_TEST_TOKEN = "asaas-test-token-0123456789"


def _worker_index() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        yield postgres_admin_url(stack), redis_base_url(stack)


@pytest.fixture(scope="session")
def admin_url(servers) -> str:
    return servers[0]


@pytest.fixture(scope="session")
def redis_urls(servers) -> dict[str, str]:
    base = servers[1]
    index = _worker_index()
    return {"broker": f"{base}/{1 + 2 * index}", "scratch": f"{base}/{2 + 2 * index}"}


@pytest.fixture(scope="session")
def settings(admin_url, redis_urls) -> Iterator[Settings]:
    """The run's database, migrated once; the environment every process of the run sees."""
    database_url = create_database(admin_url)
    redis.Redis.from_url(redis_urls["broker"]).flushdb()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DATABASE_URL", database_url)
        env.setenv("REDIS_URL", redis_urls["broker"])
        env.setenv("CLERK_WEBHOOK_SIGNING_SECRET", CLERK_TEST_SECRET)
        env.setenv("ASAAS_WEBHOOK_TOKEN", ASAAS_TEST_TOKEN)
        env.setenv("SIGNUP_CREDITS", "100")
        env.delenv("SERVICE_SCHEMA", raising=False)
        loaded = load_settings()
        migrate.upgrade(loaded)
        try:
            yield loaded
        finally:
            drop_database(admin_url, database_url)


@pytest.fixture(scope="session")
def engine(settings):
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine, settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the run's database; every table is emptied after the test."""
    yield make_session_factory(engine)
    truncate_all(engine, settings.service_schema)


@pytest.fixture
def session(session_factory) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture
def redis_client(redis_urls) -> Iterator[redis.Redis]:
    """A Redis client on a database number of its own, empty before and after the test."""
    client = redis.Redis.from_url(redis_urls["scratch"])
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def producer(settings):
    app = create_producer(settings)
    yield app
    app.close()


@pytest.fixture(scope="session")
def celery_worker(producer) -> Iterator[WorkerProcess]:
    """A real `celery worker` subprocess (prefork, 2 processes) on both queues."""
    worker = WorkerProcess(producer)
    worker.start()
    yield worker
    worker.stop()
