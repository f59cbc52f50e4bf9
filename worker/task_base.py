"""The Celery task base: every run is one database transaction.

The task function (bound: `bind=True`) reads its session as `task.session` and never commits:
the base class commits when the function returns and rolls back when it raises. (The session is
not passed as an argument: Celery re-sends a task's own arguments when it retries.) Tasks it wants sent next are
handed to `send_after_commit` and go out only once the transaction committed, so a worker never
enqueues work for rows that were rolled back.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from celery import Task
from celery.canvas import Signature
from sqlalchemy.orm import Session

from worker.database import session_factory

log = logging.getLogger(__name__)

_AFTER_COMMIT = "after_commit"


def send_after_commit(session: Session, signature: Signature) -> None:
    session.info.setdefault(_AFTER_COMMIT, []).append(signature)


def send_follow_ups(session: Session) -> int:
    """Send the tasks handed to `send_after_commit`; call once the transaction committed.
    Returns how many went out."""
    sent = 0
    for signature in session.info.pop(_AFTER_COMMIT, []):
        try:
            signature.apply_async()
            sent += 1
        except Exception:
            # The work is committed; a lost follow-up for an inbox row is recovered by
            # inbox.sweep, which re-enqueues rows left pending.
            log.exception("could not enqueue follow-up task %s", signature.task)
    return sent


_current_session: ContextVar[Session] = ContextVar("task_session")


class TransactionalTask(Task):
    abstract = True

    @property
    def session(self) -> Session:
        """The session of the run in progress."""
        return _current_session.get()

    def __call__(self, *args, **kwargs):
        with session_factory()() as session:
            token = _current_session.set(session)
            try:
                with session.begin():
                    result = super().__call__(*args, **kwargs)
            finally:
                _current_session.reset(token)
            send_follow_ups(session)
        return result
