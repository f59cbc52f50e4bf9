"""`pedro-webhooks`: database migrations and running the whole service locally."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from models import migrate
from models.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:  # for annotations: the commands import what they use inside themselves
    from sqlalchemy.orm import Session, sessionmaker


@click.group()
def main() -> None:
    """Pedro AI webhook service."""


@main.group()
def db() -> None:
    """Schema migrations (Alembic); settings come from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Migrate up to REVISION (default: head)."""
    migrate.upgrade(_settings_or_exit(), revision)


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Migrate down to REVISION (`base` removes everything the migrations created)."""
    migrate.downgrade(_settings_or_exit(), revision)


@db.command()
def current() -> None:
    """Show the revision the database is at."""
    migrate.current(_settings_or_exit())


@main.group()
def inbox() -> None:
    """The webhook inbox: what arrived, and replaying it."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@inbox.command()
def status() -> None:
    """Count inbox rows by source and status."""
    from sqlalchemy import func, select

    from models.inbox import WebhookInbox

    with _session_factory().begin() as session:
        rows = session.execute(
            select(WebhookInbox.source, WebhookInbox.status, func.count())
            .group_by(WebhookInbox.source, WebhookInbox.status)
            .order_by(WebhookInbox.source, WebhookInbox.status)
        ).all()
    for source, state, count in rows:
        click.echo(f"{source:6s} {state:10s} {count}")


@inbox.command()
@click.argument("inbox_ids", nargs=-1, type=int)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["unmatched", "needs_attention", "failed", "ignored"]),
    help="Replay every row with this status (repeatable).",
)
def replay(inbox_ids: tuple[int, ...], statuses: tuple[str, ...]) -> None:
    """Put rows back to pending and enqueue them: INBOX_IDS (any status but pending, processed
    included) and every row with a --status (unmatched, failed or ignored).

    Processing is idempotent: a replayed row changes nothing that was already applied.
    """
    from sqlalchemy import select

    from models.inbox import WebhookInbox
    from worker.celery_app import app
    from worker.inbox.replay import requeue
    from worker.task_base import send_follow_ups

    if not inbox_ids and not statuses:
        raise click.UsageError("name inbox ids or --status")
    with _session_factory()() as session:
        with session.begin():
            replayed = requeue(session, list(inbox_ids), include_processed=True)
            if statuses:
                ids = session.scalars(select(WebhookInbox.id).where(WebhookInbox.status.in_(statuses))).all()
                replayed += requeue(session, list(ids))
        sent = send_follow_ups(session, app)
    click.echo(f"replayed {len(replayed)} row(s), enqueued {sent}: {replayed}")


def _session_factory() -> sessionmaker[Session]:
    from models.db import make_engine, make_session_factory

    return make_session_factory(make_engine(_settings_or_exit()))


@main.command()
@click.option(
    "--data-dir",
    default=".local",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded servers keep their data (keep it inside the project).",
)
@click.option("--procfile", default="Procfile", show_default=True)
def run(data_dir: Path, procfile: str) -> None:
    """Run every Procfile process with honcho, after migrating.

    When DATABASE_URL / REDIS_URL are not set, an embedded PostgreSQL / Redis-compatible server
    is started first (data in DATA_DIR) and stopped again when this command ends.
    """
    from worker.dev import local_run

    started: list[local_run.EmbeddedServer] = []
    try:
        local_run.start_missing_servers(data_dir, started)
        secrets_file = local_run.ensure_local_secrets(data_dir)
        migrate.upgrade(_settings_or_exit())
        local_run.print_where_to_look(secrets_file)
        local_run.run_honcho(procfile)
    finally:
        for server in reversed(started):
            click.echo(f"stopping {type(server).__name__}", err=True)
            server.stop()


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
