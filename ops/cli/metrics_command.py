"""`pedro-webhooks metrics`: the Prometheus exporter for alerts (the Procfile's `metrics`)."""

from __future__ import annotations

import signal

import click

from ops.cli.context import CliContext, pass_context


@click.command()
@click.option(
    "--address",
    envvar="OPS_METRICS_ADDRESS",
    default="127.0.0.1",
    show_default=True,
    help="Bind address (env OPS_METRICS_ADDRESS). Keep it private: operators only.",
)
@click.option(
    "--port",
    envvar="OPS_METRICS_PORT",
    default=9808,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (env OPS_METRICS_PORT).",
)
@pass_context
def metrics(cli: CliContext, address: str, port: int) -> None:
    """Serve inbox, queue and debit gauges at http://ADDRESS:PORT/metrics, read from PostgreSQL
    and Redis at each scrape. Never on the public webhook port."""
    import redis

    from models.logs import configure_logging
    from ops.queries.metrics import make_exporter, make_registry
    from ops.queries.queues import queue_names

    settings = cli.settings()  # both servers checked: a wrong URL stops it here, in one line
    configure_logging()
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=5)
    registry = make_registry(cli.engine(), client, queue_names(settings))
    server = make_exporter(registry, address, port)
    click.echo(f"metrics: serving http://{address}:{server.server_port}/metrics", err=True)

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        client.close()


COMMANDS = [metrics]
