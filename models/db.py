"""Engine and session factory. Built from settings by each process after start-up (and, in
Celery's prefork workers, after fork): a connection pool must never cross a fork.

Every transaction runs with the server settings of `_server_settings` (UTC, the lock timeout,
the client check): once per connection through the `options` startup parameter, or, behind a
pooler in transaction mode (DB_TRANSACTION_POOLER=true), at the start of every transaction with
SET LOCAL semantics, and psycopg then never prepares a statement. Why, and what an AUTOCOMMIT
engine misses there: docs/design.md ("Database connections").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from models.base import SERVICE_SCHEMA
from models.settings import DatabaseSettings


def make_engine(settings: DatabaseSettings, *, pre_ping: bool = True, **kwargs: Any) -> Engine:
    """`pre_ping`: test each pooled connection with a round trip before handing it out. A hot
    path that instead retries once on a connection found dead (SQLAlchemy's "optimistic"
    disconnect handling) may turn it off."""
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    if settings.db_transaction_pooler:
        connect_args["prepare_threshold"] = None
    else:
        connect_args["options"] = " ".join(f"-c {name}={value}" for name, value in _server_settings(settings))
    # The models name SERVICE_SCHEMA; another configured schema is substituted when each
    # statement runs. Only then: SQLAlchemy rewrites every statement's SQL string for the map on
    # each execution (6 % of a worker's CPU per webhook), even when it maps a name to itself.
    execution_options = {}
    if settings.service_schema != SERVICE_SCHEMA:
        execution_options["schema_translate_map"] = {SERVICE_SCHEMA: settings.service_schema}
    engine = create_engine(
        settings.database_url.get_secret_value(),
        pool_pre_ping=pre_ping,
        connect_args=connect_args,
        execution_options=execution_options,
        hide_parameters=True,
        **kwargs,
    )
    if settings.db_transaction_pooler:
        event.listen(engine, "begin", _set_per_transaction(settings))
    return engine


def once_more_if_disconnected() -> Retrying:
    """For a path built with `pre_ping=False`: run the block a second time when its connection
    was found dead (PostgreSQL restarted, a backend terminated). SQLAlchemy then invalidates
    the pool's older connections, so the second try connects afresh; a second failure is
    raised, and is a real outage. Only for work that is safe to repeat."""
    return Retrying(retry=retry_if_exception(_disconnected), stop=stop_after_attempt(2), reraise=True)


def _disconnected(exc: BaseException) -> bool:
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends, roll back if it raises."""
    with factory.begin() as session:
        yield session


def _server_settings(settings: DatabaseSettings) -> list[tuple[str, str]]:
    # Prisma writes TIMESTAMP(3) values in UTC; make CURRENT_TIMESTAMP defaults agree.
    values = [("timezone", "UTC"), ("lock_timeout", str(settings.db_lock_timeout_ms))]
    if settings.db_client_check_ms:
        values.append(("client_connection_check_interval", str(settings.db_client_check_ms)))
    return values


def _set_per_transaction(settings: DatabaseSettings) -> Callable[[Connection], None]:
    """A `begin` hook that opens each transaction with the server settings, in one round trip.

    It runs inside SQLAlchemy's begin, before SQLAlchemy's transaction exists, so it talks to the
    driver's connection (psycopg opens the transaction with this statement) and wraps a driver
    error as SQLAlchemy would, so that callers see the errors they retry on."""
    names = _server_settings(settings)
    statement = "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name, _ in names)
    values = [value for _, value in names]

    def set_local(connection: Connection) -> None:
        try:
            connection.connection.dbapi_connection.execute(statement, values)  # type: ignore[union-attr]
        except psycopg.Error as error:
            raise sa_exc.DBAPIError.instance(
                statement, values, error, psycopg.Error, hide_parameters=True, dialect=connection.dialect
            ) from error

    return set_local
