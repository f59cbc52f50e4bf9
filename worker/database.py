"""The worker process's engine and session factory, made after fork.

Celery's prefork pool forks children from a parent that may already hold pooled connections;
a connection shared across a fork corrupts both sides. Each process therefore builds its own
engine on first use, keyed on its pid, and `worker_process_init` drops anything inherited.
"""

from __future__ import annotations

import os

from celery.signals import worker_process_init
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_session_factory
from models.settings import process_settings

_pid: int | None = None
_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def session_factory() -> sessionmaker[Session]:
    global _pid, _engine, _factory
    if _factory is None or _pid != os.getpid():
        _engine = make_engine(process_settings(), pool_size=2, max_overflow=2)
        _factory = make_session_factory(_engine)
        _pid = os.getpid()
    return _factory


@worker_process_init.connect
def _forget_inherited_engine(**_: object) -> None:
    global _factory, _engine
    if _engine is not None:
        # close=False: the parent's connections belong to the parent; just drop our references.
        _engine.dispose(close=False)
    _engine = _factory = None
