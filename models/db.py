"""Engine and session factory. Built from settings by each process after start-up (and, in
Celery's prefork workers, after fork): a connection pool must never cross a fork."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from models.base import SERVICE_SCHEMA
from models.settings import DatabaseSettings


def make_engine(settings: DatabaseSettings, *, pre_ping: bool = True, **kwargs: Any) -> Engine:
    """`pre_ping`: test each pooled connection with a round trip before handing it out. A hot
    path that instead retries once on a connection found dead (SQLAlchemy's "optimistic"
    disconnect handling) may turn it off."""
    return create_engine(
        settings.database_url.get_secret_value(),
        pool_pre_ping=pre_ping,
        # Prisma writes TIMESTAMP(3) values in UTC; make CURRENT_TIMESTAMP defaults agree.
        connect_args={
            "options": _server_options(settings),
            "connect_timeout": 5,
        },
        execution_options={"schema_translate_map": {SERVICE_SCHEMA: settings.service_schema}},
        hide_parameters=True,
        **kwargs,
    )


def once_more_if_disconnected() -> Retrying:
    """For a path built with `pre_ping=False`: run the block a second time when its connection
    was found dead (PostgreSQL restarted, a backend terminated). SQLAlchemy then invalidates
    the pool's older connections, so the second try connects afresh; a second failure is
    raised, and is a real outage. Only for work that is safe to repeat."""
    return Retrying(retry=retry_if_exception(_disconnected), stop=stop_after_attempt(2), reraise=True)


def _disconnected(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends, roll back if it raises."""
    with factory.begin() as session:
        yield session


def _server_options(settings: DatabaseSettings) -> str:
    options = f"-c timezone=UTC -c lock_timeout={settings.db_lock_timeout_ms}"
    if settings.db_client_check_ms:
        options += f" -c client_connection_check_interval={settings.db_client_check_ms}"
    return options
