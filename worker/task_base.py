"""The Celery task base: every run is one database transaction.

The task function (bound: `bind=True`) reads its session as `task.session` and never commits:
the base class commits when the function returns and rolls back when it raises. Tasks it wants
sent next go to `send_after_commit`, by name, and leave only once the transaction committed. A
transient error at COMMIT is retried like one raised by the function. Why: docs/design.md
("Tasks are transactions").
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, TypeVar

from celery import Celery, Task
from sqlalchemy.orm import Session

from celery_ext.backoff import retry_countdown
from worker.database import session_factory

log = logging.getLogger(__name__)

_AFTER_COMMIT = "after_commit"


def send_after_commit(session: Session, task_name: str, **kwargs: Any) -> None:
    """Send task `task_name` with `kwargs` once the session's transaction has committed."""
    session.info.setdefault(_AFTER_COMMIT, []).append((task_name, kwargs))


def send_follow_ups(session: Session, app: Celery) -> int:
    """Send the tasks handed to `send_after_commit` through `app`; call once the transaction
    committed. Returns how many went out."""
    sent = 0
    for task_name, kwargs in session.info.pop(_AFTER_COMMIT, []):
        try:
            # A signature by name: the registered task's own apply_async when `app` has it
            # (so an eager test app runs it in place), else a plain send by name.
            app.signature(task_name, kwargs=kwargs).apply_async()
            sent += 1
        except Exception:
            # The work is committed; a lost follow-up for an inbox row is recovered by
            # inbox.sweep, which re-enqueues rows left pending.
            log.exception("could not enqueue follow-up task %s", task_name)
    return sent


_current_session: ContextVar[Session] = ContextVar("task_session")

_P = ParamSpec("_P")
_R = TypeVar("_R", covariant=True)


# Generic in the task's parameters and result (`Generic`, not `Task[_P, _R]`: Celery's Task can
# be subscripted at run time only in its latest releases, and `celery>=5.4` is allowed).
class TransactionalTask(Task, Generic[_P, _R]):
    """A task whose run is one transaction on `task.session`, committed when the function returns.

    Typing (celery-types): declare a task with the options spelled out, so the decorator's
    overloads apply, and take the bound task as `TransactionalTask[..., <its result>]`:

        @app.task(name="usage.outcome", base=TransactionalTask, bind=True)
        def outcome(task: TransactionalTask[..., dict[str, Any]], idempotency_key: str) -> dict[str, Any]:
            return requests.outcome(task.session, idempotency_key)
    """

    abstract = True

    @property
    def session(self) -> Session:
        """The session of the run in progress."""
        return _current_session.get()

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with session_factory()() as session:
            token = _current_session.set(session)
            try:
                session.begin()
                try:
                    result = super().__call__(*args, **kwargs)
                except BaseException:
                    session.rollback()
                    raise
                self._commit(session)
            finally:
                _current_session.reset(token)
            send_follow_ups(session, self.app)
        return result

    def _commit(self, session: Session) -> None:
        try:
            session.commit()
        except Exception as exc:
            if not isinstance(exc, self._commit_retry_errors()):
                raise
            raise self.retry(exc=exc, countdown=self.retry_countdown()) from exc

    def _commit_retry_errors(self) -> tuple[type[BaseException], ...]:
        return tuple(getattr(self, "autoretry_for", ()) or ())

    def retry_countdown(self) -> float:
        """The countdown autoretry would give the next try: exponential, capped, jittered."""
        return retry_countdown(self, self.request.retries)
