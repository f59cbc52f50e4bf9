"""Alembic migrations: the only way the schema changes. See README "Adding a migration"."""
