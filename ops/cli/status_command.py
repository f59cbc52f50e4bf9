"""`pedro-webhooks status`: the first command to run when on call."""

from __future__ import annotations

import os

import click

from models.connectivity import ServerUnreachable, check_redis, masked_url
from models.settings import ConfigError, load_settings
from ops.cli.context import CliContext, pass_context
from ops.cli.output import age, json_option, print_json, print_table
from ops.queries.status import Server, Status

DEFAULT_RECEIVER_URL = "http://127.0.0.1:5000"


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
    from ops.queries.status import inbox_counts, migration_state

    database = cli.database_settings()
    servers = [
        Server("PostgreSQL", cli.local.origin("DATABASE_URL"), masked_url(os.environ.get("DATABASE_URL", "")), "ok")
    ]
    redis_server, queues = _redis(cli)
    servers.append(redis_server)
    with cli.sessions()() as session:
        migration = migration_state(session, database.service_schema)
        report = Status(
            servers=servers,
            endpoints=_endpoints(),
            migration=migration,
            queues=queues,
            # A database never migrated has no inbox to count.
            inbox=inbox_counts(session) if migration.database is not None else [],
        )
    if as_json:
        print_json(report.as_json())
    else:
        _print(report)
    if redis_server.state != "ok":
        raise SystemExit(2)
    if not report.migration.up_to_date:
        raise SystemExit(1)


def _redis(cli: CliContext) -> tuple[Server, dict[str, int] | None]:
    variable = cli.local.origin("REDIS_URL")
    url = os.environ.get("REDIS_URL")
    if not url:
        return Server("Redis", variable, None, "not set"), None
    try:
        check_redis(url, variable)
        settings = load_settings()
    except ServerUnreachable as exc:
        return Server("Redis", variable, masked_url(url), f"unreachable: {exc.reason}"), None
    except ConfigError as exc:
        return Server("Redis", variable, None, str(exc)), None
    import redis

    from ops.queries.queues import queue_lengths, queue_names

    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    try:
        return Server("Redis", variable, masked_url(url), "ok"), queue_lengths(client, queue_names(settings))
    finally:
        client.close()


def _endpoints() -> dict[str, str]:
    """Where the processes listen (what `run` wrote in .local/run.env, else the defaults)."""
    flower = f"http://{os.environ.get('FLOWER_ADDRESS', '127.0.0.1')}:{os.environ.get('FLOWER_PORT', '5555')}"
    metrics = (
        f"http://{os.environ.get('OPS_METRICS_ADDRESS', '127.0.0.1')}:{os.environ.get('OPS_METRICS_PORT', '9808')}"
    )
    return {
        "receiver": os.environ.get("RECEIVER_URL", DEFAULT_RECEIVER_URL),
        "flower": os.environ.get("FLOWER_URL", flower),
        "metrics": os.environ.get("OPS_METRICS_URL", metrics + "/metrics"),
    }


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
