"""The worker process's engine and session factory, made after fork.

Each process builds its own engine on first use, keyed on its pid, and `worker_process_init`
drops anything inherited: a connection shared across a fork corrupts both sides. The pool does
not pre-ping; why: docs/design.md ("Database connections").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from celery.signals import worker_process_init
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_session_factory
from models.settings import process_settings

_pid: int | None = None
_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def session_factory() -> sessionmaker[Session]:
    global _pid, _engine, _factory
    if _factory is None or _pid != os.getpid():
        _engine = make_engine(process_settings(), pre_ping=False, pool_size=2, max_overflow=2)
        _factory = make_session_factory(_engine)
        _pid = os.getpid()
    return _factory


@contextmanager
def autocommit_connection() -> Iterator[Connection]:
    """A pooled connection in autocommit: each statement is its own transaction, committed in
    the statement's own round trip (no BEGIN, no COMMIT). Back in the pool it is transactional
    again (SQLAlchemy resets the isolation level on return)."""
    session_factory()  # this process's engine, made on first use
    assert _engine is not None
    with _engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        yield connection


@worker_process_init.connect
def _forget_inherited_engine(**_: object) -> None:
    global _factory, _engine
    if _engine is not None:
        # close=False: the parent's connections belong to the parent; just drop our references.
        _engine.dispose(close=False)
    _engine = _factory = None
