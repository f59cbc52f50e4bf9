"""`pedro-webhooks run`: the whole service locally (embedded servers when no URL is set)."""

from __future__ import annotations

from pathlib import Path

import click

from models import migrate
from ops.cli.context import CliContext, pass_context


@click.command()
@click.option(
    "--data-dir",
    default=".local",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded servers keep their data, and beat and gunicorn their files (keep it inside the project).",
)
@click.option("--procfile", default="Procfile", show_default=True)
@pass_context
def run(cli: CliContext, data_dir: Path, procfile: str) -> None:
    """Run every Procfile process with honcho, after migrating.

    When DATABASE_URL / REDIS_URL are not set, an embedded PostgreSQL / Redis-compatible server
    is started first (data in DATA_DIR) and stopped again when this command ends. The URLs in
    use are printed, and written to DATA_DIR/run.env for the commands run beside it.
    """
    from ops.local import local_run

    started: list[local_run.EmbeddedServer] = []
    run_env = None
    try:
        local_run.start_missing_servers(data_dir, started)
        secrets_file = local_run.ensure_local_secrets(data_dir)
        settings = cli.settings()  # PostgreSQL and Redis answer, or one line and exit code 2
        migrate.upgrade(settings)
        run_env = local_run.share_with_commands(data_dir, started)
        local_run.print_where_to_look(secrets_file, started)
        local_run.run_honcho(procfile, data_dir)
    finally:
        if run_env is not None:
            run_env.unlink(missing_ok=True)
        for server in reversed(started):
            click.echo(f"stopping {local_run.server_name(server)}", err=True)
            server.stop()


COMMANDS = [run]
