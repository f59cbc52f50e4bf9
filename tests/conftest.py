"""Test infrastructure: real PostgreSQL, real Redis, a real Celery worker when asked for.

One uniquely named database per test run (per xdist worker), migrated once with Alembic and
dropped at the end. Tests are isolated by emptying every table after each test that touched the
database: rolling back cannot isolate work that a Celery worker process committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from messaging.celery_config import create_producer
from models import migrate
from models.db import make_engine, make_session_factory
from models.settings import Settings, load_settings
from tests.support.celery_worker import WorkerProcess
from tests.support.databases import create_database, drop_database, truncate_all
from tests.support.servers import claim_redis_databases, postgres_admin_url, redis_base_url
from worker.celery_app import app as worker_app

# Webhook secrets the tests sign with. Test-only values, never used anywhere else.
CLERK_TEST_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXBlZHJvLXdlYmhvb2tz"
ASAAS_TEST_TOKEN = "asaas-test-token-0123456789"
INGEST_TEST_KEY = "ingest-test-key-for-pedro-webhooks-0123456789"
# The services the test workers accept usage messages from (USAGE_SERVICE_KEYS): test-only keys.
USAGE_TEST_KEYS = {"tests": "usage-test-key-0123456789", "other": "usage-other-service-key-0123456789"}


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        yield postgres_admin_url(stack), redis_base_url(stack)


@pytest.fixture(scope="session")
def admin_url(servers) -> str:
    return servers[0]


@pytest.fixture(scope="session")
def redis_urls(servers) -> Iterator[dict[str, str]]:
    """Two Redis database numbers claimed for this run alone (broker, scratch).

    Runs that overlap on one machine (xdist workers, two checkouts) would otherwise share a
    broker, and one run's Celery worker would take the other's tasks.
    """
    with claim_redis_databases(servers[1], count=2) as (broker, scratch):
        yield {"broker": f"{servers[1]}/{broker}", "scratch": f"{servers[1]}/{scratch}"}


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
        env.setenv("INGEST_SIGNING_KEY", INGEST_TEST_KEY)
        env.setenv("USAGE_SERVICE_KEYS", ",".join(f"{name}:{key}" for name, key in USAGE_TEST_KEYS.items()))
        env.setenv("SIGNUP_CREDITS", "100")
        # Short, so tests that hold a lock on purpose see the worker's retry path quickly.
        env.setenv("DB_LOCK_TIMEOUT_MS", "1000")
        env.delenv("SERVICE_SCHEMA", raising=False)
        loaded = load_settings()
        migrate.upgrade(loaded)
        # Tasks run in this process (`task.apply()`) send their follow-ups (e.g. a replay's
        # `webhooks.process`) eagerly here too, instead of to a broker no test is reading.
        worker_app.conf.task_always_eager = True
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
