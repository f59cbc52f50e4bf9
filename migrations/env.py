"""Alembic environment: settings from the environment, timeouts on, version table in the
service's own schema (a table Prisma does not know in `public` is drift)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from models.base import SERVICE_SCHEMA
from models.db import make_engine
from models.settings import load_database_settings
from models.tables import metadata

config = context.config
# Longest a statement may run, and longest it may wait for a lock: a migration that queues
# behind the app's traffic must fail fast rather than block every writer behind it.
STATEMENT_TIMEOUT = config.attributes.get("statement_timeout", "60s")
LOCK_TIMEOUT = config.attributes.get("lock_timeout", "5s")


def run_migrations_online() -> None:
    settings = config.attributes.get("settings") or load_database_settings()
    schema = settings.service_schema
    config.attributes["service_schema"] = schema
    engine = make_engine(settings)
    with engine.connect() as connection:
        connection.execute(text(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'"))
        connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        # The version table lives in the service schema, so that schema must exist first.
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.commit()
        connection = connection.execution_options(schema_translate_map={SERVICE_SCHEMA: schema})
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=True,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run_migrations_online()
