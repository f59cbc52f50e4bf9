"""Alembic migrations: the only way the schema changes. See docs/development.md ("Adding a migration")."""
