"""`pedro-webhooks db upgrade|downgrade|current`: schema migrations (DATABASE_URL only)."""

from __future__ import annotations

import logging

import click

from models import migrate
from ops.cli.context import CliContext, pass_context


@click.group()
@click.pass_context
def db(ctx: click.Context) -> None:
    """Schema migrations (Alembic); settings come from the environment."""
    alembic = logging.getLogger("alembic")
    ctx.call_on_close(lambda level=alembic.level: alembic.setLevel(level))  # only for this command
    alembic.setLevel(logging.INFO)  # "Running upgrade 0004 -> 0005, ..."


@db.command()
@click.argument("revision", default="head")
@pass_context
def upgrade(cli: CliContext, revision: str) -> None:
    """Migrate up to REVISION (default: head)."""
    migrate.upgrade(cli.database_settings(), revision)


@db.command()
@click.argument("revision")
@pass_context
def downgrade(cli: CliContext, revision: str) -> None:
    """Migrate down to REVISION (`base` removes everything the migrations created)."""
    migrate.downgrade(cli.database_settings(), revision)


@db.command()
@pass_context
def current(cli: CliContext) -> None:
    """Show the revision the database is at."""
    migrate.current(cli.database_settings())


COMMANDS = [db]
