"""What every command shares: the settings it needs (and only those), its servers checked before
it starts, and one-line errors.

A command that only reads the database asks for `database_settings()` (DATABASE_URL alone); a
command that enqueues asks for `settings()` (REDIS_URL too). Either checks the server(s) first:
an unreachable or refusing one stops the command with one line and exit code 2 (`--debug` shows
the traceback instead). Variables missing from the environment are read from a local run's
`.local/` files (`ops.local.local_env`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from models.connectivity import ServerUnreachable, check_postgresql, check_redis
from models.logs import LogConfigError
from models.settings import (
    ConfigError,
    DatabaseSettings,
    Settings,
    SupportCreditSettings,
    load_database_settings,
    load_settings,
    load_support_credit_settings,
)
from ops.local.local_env import LocalEnvironment

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

_T = TypeVar("_T")

# What a command cannot start without: a configuration variable, a server, the log settings.
STARTUP_ERRORS = (ConfigError, ServerUnreachable, LogConfigError)


class StartupError(click.ClickException):
    """Printed as one line (`Error: ...`); exit code 2, as for every start-up failure."""

    exit_code = 2


@dataclass
class CliContext:
    debug: bool = False
    local: LocalEnvironment = field(default_factory=lambda: LocalEnvironment(Path(".local")))
    _database: DatabaseSettings | None = None
    _settings: Settings | None = None
    _engine: Engine | None = None

    def database_settings(self) -> DatabaseSettings:
        """DATABASE_URL (and the service schema), PostgreSQL checked."""
        if self._database is None:
            settings = self.guard(load_database_settings)
            self.guard(
                lambda: check_postgresql(settings.database_url.get_secret_value(), self.local.origin("DATABASE_URL"))
            )
            self._database = settings
        return self._database

    def settings(self) -> Settings:
        """Every setting, PostgreSQL and Redis checked."""
        if self._settings is None:
            settings = self.guard(load_settings)
            self._database = self._database or self.database_settings()
            self.guard(lambda: check_redis(settings.redis_url.get_secret_value(), self.local.origin("REDIS_URL")))
            self._settings = settings
        return self._settings

    def support_credit_settings(self) -> SupportCreditSettings:
        """`credits grant|adjust`'s bound (SUPPORT_CREDITS_MAX_AMOUNT); no server needed."""
        return self.guard(load_support_credit_settings)

    def engine(self) -> Engine:
        if self._engine is None:
            from models.db import make_engine

            self._engine = make_engine(self.database_settings(), pool_size=2, max_overflow=2)
        return self._engine

    def sessions(self) -> sessionmaker[Session]:
        from models.db import make_session_factory

        return make_session_factory(self.engine())

    def celery_app(self) -> Celery:
        """The worker's Celery app, configured from `settings()` (Redis checked), to send tasks."""
        self.settings()
        from worker.celery_app import app

        return app

    def guard(self, step: Callable[[], _T]) -> _T:
        """Run a start-up step; a failure becomes one line and exit code 2 (unless --debug)."""
        try:
            return step()
        except STARTUP_ERRORS as exc:
            self.fail(exc)

    def fail(self, error: BaseException) -> NoReturn:
        if self.debug:
            raise error
        raise StartupError(str(error)) from None

    def unreachable(self, message: str) -> NoReturn:
        """A server the command needs (other than PostgreSQL and Redis) does not answer."""
        raise StartupError(message)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


pass_context = click.make_pass_decorator(CliContext)
