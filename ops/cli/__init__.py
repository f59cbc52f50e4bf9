"""`pedro-webhooks`: the command a person on call uses (and `run`, for a local service).

One module per command group; the work itself lives in `ops.queries` (and the worker's domain packages),
so tests and other code can call it without the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from models.logs import configure_logging
from ops.cli import (
    audit_command,
    check_command,
    credits_commands,
    db_commands,
    dev_commands,
    inbox_commands,
    metrics_command,
    reconcile_command,
    report_commands,
    run_command,
    send_command,
    status_command,
    sweep_command,
    user_commands,
)
from ops.cli.context import STARTUP_ERRORS, CliContext
from ops.local.local_env import LocalEnvironment


class OperatorGroup(click.Group):
    """Turns a start-up error raised anywhere in a command into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except STARTUP_ERRORS as exc:
            cli = ctx.find_object(CliContext)
            if cli is None:
                raise
            cli.fail(exc)


@click.group(cls=OperatorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option(
    "--local-dir",
    default=".local",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where `run` leaves the URLs of the servers it started and the local secrets; "
    "read for variables that are not set.",
)
@click.pass_context
def main(ctx: click.Context, debug: bool, local_dir: Path) -> None:
    """Pedro AI webhook service: operate it (status, inbox, users, credits, reports), try it
    (send, dev seed) and run it locally (run).

    Start with `pedro-webhooks status`.
    """
    local = LocalEnvironment(local_dir)
    if ctx.invoked_subcommand != "run":  # `run` writes these files; it never reads a stale one
        local.load()
    cli = CliContext(debug=debug, local=local)
    ctx.obj = cli
    ctx.call_on_close(cli.close)
    cli.guard(lambda: configure_logging(default_level="WARNING"))


for module in (
    status_command,
    check_command,
    inbox_commands,
    user_commands,
    reconcile_command,
    credits_commands,
    send_command,
    report_commands,
    sweep_command,
    dev_commands,
    metrics_command,
    db_commands,
    run_command,
    audit_command,
):
    for command in module.COMMANDS:
        main.add_command(command)

__all__ = ["main"]
