"""`pedro-webhooks status`: the first command to run when on call."""

from __future__ import annotations

import os

import click

from models.connectivity import masked_url
from models.settings import load_settings
from ops.cli.context import CliContext, pass_context
from ops.cli.output import age, json_option, print_json, print_table
from ops.queries.status import Server, Status


@click.command()
@json_option
@pass_context
def status(cli: CliContext, as_json: bool) -> None:
    """Servers and URLs in use (passwords masked), migration state, queue lengths, inbox counts
    by status and the age of the oldest pending row.

    Exit code 0 when PostgreSQL and Redis answer and the database is migrated to the head;
    2 when a server does not answer (PostgreSQL: one line, nothing else to show); 1 when the
    database is behind the code's migrations.
    """
    from ops.queries.queues import queue_names
    from ops.queries.status import fallback_state, redis_state, status_report

    database = cli.database_settings()
    servers = [
        Server("PostgreSQL", cli.local.origin("DATABASE_URL"), masked_url(os.environ.get("DATABASE_URL", "")), "ok")
    ]
    redis_server, queues = redis_state(
        os.environ.get("REDIS_URL"), cli.local.origin("REDIS_URL"), lambda: queue_names(load_settings())
    )
    servers.append(redis_server)
    fallback = fallback_state(os.environ["REDIS_URL"]) if redis_server.state == "ok" else None
    with cli.sessions()() as session:
        report = status_report(session, database.service_schema, servers, queues, fallback)
    if as_json:
        print_json(report.as_json())
    else:
        _print(report)
    if redis_server.state != "ok":
        raise SystemExit(2)
    if not report.migration.up_to_date:
        raise SystemExit(1)


def _print(report: Status) -> None:
    click.echo("servers:")
    for server in report.servers:
        click.echo(f"  {server.name:10s} {server.state:12s} {server.url or '-'}  via {server.variable}")
    click.echo("endpoints:")
    for name, url in report.endpoints.items():
        click.echo(f"  {name:10s} {url}")
    migration = report.migration
    state = "up to date" if migration.up_to_date else "BEHIND: run `pedro-webhooks db upgrade`"
    click.echo(f"migration: database at {migration.database or 'nothing'}, code at {migration.head} ({state})")
    if report.queues is None:
        click.echo("queues: unknown (Redis)")
    else:
        click.echo("queues: " + ", ".join(f"{name} {length}" for name, length in report.queues.items()))
    if report.fallback is not None:
        oldest = report.fallback.oldest_age_seconds
        click.echo(
            f"fallback store: {report.fallback.entries} waiting"
            + ("" if oldest is None else f", oldest {age(oldest)}")
            + " (deliveries queued while PostgreSQL was down)"
        )
    ages = report.oldest_pending_age_seconds()
    click.echo("inbox:")
    print_table(
        ["status", "rows", "oldest pending"],
        [
            [status, count, age(max(ages.values())) if status == "pending" and ages else ""]
            for status, count in report.inbox_totals().items()
        ],
    )
    if ages:
        click.echo("oldest pending by source: " + ", ".join(f"{source} {age(s)}" for source, s in ages.items()))


COMMANDS = [status]
