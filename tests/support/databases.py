"""Create, migrate and drop uniquely named test databases."""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from models import migrate
from models.settings import Settings, load_settings


def libpq_url(url: str) -> str:
    """The URL as libpq (plain psycopg) takes it: no SQLAlchemy driver name."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def create_database(admin_url: str, prefix: str = "pw_test") -> str:
    """Create an empty database with a unique name; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def truncate_all(engine: Engine, service_schema: str) -> None:
    """Empty every table but Alembic's: isolation for tests whose work a worker committed.
    Sequences go on (no RESTART IDENTITY): one worker and broker serve the whole run, and a
    retry or redelivery left over from a test must never find the next test's row under its id.

    Every table is locked first (ACCESS EXCLUSIVE, what TRUNCATE takes: a transaction of a worker
    still writing is waited for, as before), then only the tables whose file is not empty are
    truncated: a table never written since its last TRUNCATE has a file of zero bytes (an insert,
    even one rolled back, extends it), so it is in the very state TRUNCATE would leave. TRUNCATE
    costs a new file per table and index; most tests write to two or three of the tables."""
    with engine.begin() as conn:
        tables = (
            conn.execute(
                text(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                    "WHERE schemaname IN ('public', :schema) AND tablename <> 'alembic_version'"
                ),
                {"schema": service_schema},
            )
            .scalars()
            .all()
        )
        if not tables:
            return
        conn.execute(text(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"))
        written = (
            conn.execute(
                text(
                    "SELECT name FROM unnest(CAST(:tables AS text[])) AS name "
                    "WHERE pg_relation_size(CAST(name AS regclass)) > 0"
                ),
                {"tables": list(tables)},
            )
            .scalars()
            .all()
        )
        if written:
            conn.execute(text(f"TRUNCATE {', '.join(written)} CASCADE"))


def scratch_environment(stack: ExitStack, **environ: str) -> tuple[Settings, str, str]:
    """For scripts (bench/): a migrated database and a Redis database number of their own,
    released when `stack` closes. Sets DATABASE_URL, REDIS_URL and `environ` in os.environ;
    returns the settings, the Redis base URL and the database URL."""
    from tests.support.servers import claim_redis_databases, postgres_admin_url, redis_base_url

    admin_url, redis_base = postgres_admin_url(stack), redis_base_url(stack)
    broker_db, _ = stack.enter_context(claim_redis_databases(redis_base, 2))
    database_url = create_database(admin_url, prefix="pw_bench")
    stack.callback(drop_database, admin_url, database_url)
    environ.setdefault("INGEST_SIGNING_KEY", uuid.uuid4().hex)  # the receiver and workers it starts share it
    from tests.conftest import USAGE_TEST_KEYS

    # The services its workers accept usage messages from (`tests.support.usage.credits_client`).
    environ.setdefault("USAGE_SERVICE_KEYS", ",".join(f"{name}:{key}" for name, key in USAGE_TEST_KEYS.items()))
    os.environ.update(DATABASE_URL=database_url, REDIS_URL=f"{redis_base}/{broker_db}", **environ)
    settings = load_settings()
    migrate.upgrade(settings)
    return settings, redis_base, database_url


def settings_copy(settings: Settings, **changes: Any) -> Settings:
    """`settings` with some fields changed (validated again, so URLs are normalised)."""
    return Settings(**{**settings.model_dump(), **changes})
