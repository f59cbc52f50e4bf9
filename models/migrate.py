"""Run Alembic from code (no alembic.ini: the settings come from the environment)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

import migrations
from models.settings import DatabaseSettings


def alembic_config(settings: DatabaseSettings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["settings"] = settings
    return config


def upgrade(settings: DatabaseSettings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: DatabaseSettings, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)


def current(settings: DatabaseSettings) -> None:
    command.current(alembic_config(settings), verbose=False)


def head_revision() -> str | None:
    """The newest revision the migrations folder holds."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(migrations.__file__).parent)).get_current_head()


def database_revision(connection: Connection, service_schema: str) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table_schema": service_schema})
    return context.get_current_revision()
