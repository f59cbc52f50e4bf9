"""`pedro-webhooks`: database migrations and running the whole service locally."""

from __future__ import annotations

import base64
import logging
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import click

from models import migrate
from models.settings import ConfigError, load_settings


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
    type=click.Choice(["unmatched", "failed", "ignored"]),
    help="Replay every row with this status (repeatable).",
)
def replay(inbox_ids: tuple[int, ...], statuses: tuple[str, ...]) -> None:
    """Put rows back to pending and enqueue them: INBOX_IDS (any status but pending, processed
    included) and every row with a --status (unmatched, failed or ignored).

    Processing is idempotent: a replayed row changes nothing that was already applied.
    """
    from sqlalchemy import select

    from models.inbox import WebhookInbox
    from worker.task_base import send_follow_ups
    from worker.webhook_tasks import requeue

    if not inbox_ids and not statuses:
        raise click.UsageError("name inbox ids or --status")
    with _session_factory()() as session:
        with session.begin():
            replayed = requeue(session, list(inbox_ids), include_processed=True)
            if statuses:
                ids = session.scalars(select(WebhookInbox.id).where(WebhookInbox.status.in_(statuses))).all()
                replayed += requeue(session, list(ids))
        sent = send_follow_ups(session)
    click.echo(f"replayed {len(replayed)} row(s), enqueued {sent}: {replayed}")


def _session_factory():
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
    started: list = []
    try:
        _start_missing_servers(data_dir, started)
        secrets_file = _ensure_local_secrets(data_dir)
        migrate.upgrade(_settings_or_exit())
        _print_where_to_look(secrets_file)
        _run_honcho(procfile)
    finally:
        for server in reversed(started):
            click.echo(f"stopping {type(server).__name__}", err=True)
            server.stop()


def _start_missing_servers(data_dir: Path, started: list) -> None:
    from worker.embedded_servers import EmbeddedPostgres, EmbeddedRedis

    for variable, server_class, folder in (
        ("DATABASE_URL", EmbeddedPostgres, "postgres"),
        ("REDIS_URL", EmbeddedRedis, "redis"),
    ):
        if os.environ.get(variable):
            continue
        server = server_class(data_dir / folder)
        started.append(server)
        os.environ[variable] = server.start()
        click.echo(f"started {server_class.__name__} for {variable} on port {server.port}", err=True)


def _ensure_local_secrets(data_dir: Path) -> Path | None:
    """Give a local run webhook secrets (and Flower credentials) of its own when none are set.

    They are kept in DATA_DIR/local-secrets.env (mode 600) and never printed: point a local
    sender (or the tests' signer) at that file.
    """
    wanted = ("CLERK_WEBHOOK_SIGNING_SECRET", "ASAAS_WEBHOOK_TOKEN", "FLOWER_BASIC_AUTH")
    if all(os.environ.get(name) for name in wanted):
        return None
    path = data_dir / "local-secrets.env"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        clerk = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        path.write_text(
            f"CLERK_WEBHOOK_SIGNING_SECRET={clerk}\n"
            f"ASAAS_WEBHOOK_TOKEN={secrets.token_urlsafe(24)}\n"
            f"FLOWER_BASIC_AUTH=ops:{secrets.token_urlsafe(12)}\n"
        )
        path.chmod(0o600)
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name in wanted and not os.environ.get(name):
            os.environ[name] = value
    click.echo(f"secrets not set: using the local ones in {path}", err=True)
    return path


def _print_where_to_look(secrets_file: Path | None) -> None:
    port = os.environ.get("PORT", "5000")  # honcho gives the first process (web) this port
    flower = f"http://{os.environ.get('FLOWER_ADDRESS', '127.0.0.1')}:{os.environ.get('FLOWER_PORT', '5555')}"
    login = f"FLOWER_BASIC_AUTH in {secrets_file}" if secrets_file else "FLOWER_BASIC_AUTH"
    click.echo(f"receiver: http://127.0.0.1:{port}/webhooks/clerk and /webhooks/asaas", err=True)
    click.echo(f"Flower: {flower} (log in with the user:password of {login})", err=True)


def _run_honcho(procfile: str) -> None:
    # The Procfile names console scripts (celery, gunicorn) installed beside this interpreter;
    # put them on PATH even when the virtualenv is not activated.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-f", procfile], env=env)

    def forward(signum: int, _frame: object) -> None:
        honcho.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    while True:
        try:
            honcho.wait()
            return
        except KeyboardInterrupt:
            # Ctrl-C reached honcho too (same process group); wait for it to stop its children.
            continue


def _settings_or_exit():
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
