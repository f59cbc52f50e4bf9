"""The `run` command's helpers: embedded servers for missing URLs, local secrets, honcho."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click

from models.connectivity import masked_url
from ops.local.local_env import RUN_ENV, write_env_file
from ops.local.servers import LocalPostgres, LocalRedis, PostgresPrograms

EmbeddedServer = LocalPostgres | LocalRedis

LOCAL_BIND_HOST = "127.0.0.1"
LOCAL_OPERATOR = "ops"  # the console's local login, an operator


def start_missing_servers(data_dir: Path, started: list[EmbeddedServer]) -> None:
    """The embedded servers from pip (the `embedded` extra) for the URLs that are not set."""
    makers: tuple[tuple[str, Callable[[], EmbeddedServer]], ...] = (
        ("DATABASE_URL", lambda: LocalPostgres(data_dir / "postgres", programs=PostgresPrograms.embedded())),
        ("REDIS_URL", lambda: LocalRedis(data_dir / "redis", machine_program=False)),
    )
    for variable, make in makers:
        if os.environ.get(variable):
            continue
        server = make()
        started.append(server)
        os.environ[variable] = server.start()
        click.echo(f"started {server_name(server)} for {variable} on port {server.port}", err=True)


def server_name(server: EmbeddedServer) -> str:
    return "embedded PostgreSQL" if isinstance(server, LocalPostgres) else "embedded Redis"


def ensure_local_secrets(data_dir: Path) -> Path | None:
    """Give a local run webhook secrets, the ingest signing key, a usage service key, and Flower's
    and the console's logins of its own when they are not set (the console's login is an operator).

    They are kept in DATA_DIR/local-secrets.env (mode 600) and never printed: point a local
    sender (or the tests' signer) at that file.
    """
    made = {
        "CLERK_WEBHOOK_SIGNING_SECRET": lambda: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        "ASAAS_WEBHOOK_TOKEN": lambda: secrets.token_urlsafe(24),
        "FLOWER_BASIC_AUTH": lambda: f"ops:{secrets.token_urlsafe(12)}",
        "CONSOLE_BASIC_AUTH": lambda: f"{LOCAL_OPERATOR}:{secrets.token_urlsafe(12)}",
        "INGEST_SIGNING_KEY": lambda: secrets.token_urlsafe(32),
        # The services allowed to send usage tasks: one, `local` (CREDITS_SERVICE=local and its key
        # for a client run beside it).
        "USAGE_SERVICE_KEYS": lambda: f"local:{secrets.token_urlsafe(32)}",
    }
    wanted = tuple(made)
    if all(os.environ.get(name) for name in wanted):
        return None
    path = data_dir / "local-secrets.env"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
    known = {line.partition("=")[0] for line in path.read_text().splitlines()}
    # A file from before a secret was added gets the missing one appended.
    missing = "".join(f"{name}={make()}\n" for name, make in made.items() if name not in known)
    if missing:
        with path.open("a") as file:
            file.write(missing)
    path.chmod(0o600)
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name in wanted and not os.environ.get(name):
            os.environ[name] = value
            if name == "CONSOLE_BASIC_AUTH":
                # The local login may act in the console (replay, prune, support credits).
                os.environ.setdefault("CONSOLE_OPERATORS", LOCAL_OPERATOR)
    click.echo(f"secrets not set: using the local ones in {path}", err=True)
    return path


def endpoints() -> dict[str, str]:
    """Where the Procfile's processes listen under `run`."""
    port = os.environ.get("PORT", "5000")  # honcho gives the first process (web) this port
    flower = f"http://{os.environ.get('FLOWER_ADDRESS', '127.0.0.1')}:{os.environ.get('FLOWER_PORT', '5555')}"
    metrics = (
        f"http://{os.environ.get('OPS_METRICS_ADDRESS', '127.0.0.1')}:{os.environ.get('OPS_METRICS_PORT', '9808')}"
    )
    console = f"http://{os.environ.get('CONSOLE_ADDRESS', '127.0.0.1')}:{os.environ.get('CONSOLE_PORT', '5556')}"
    return {
        "RECEIVER_URL": f"http://127.0.0.1:{port}",
        "FLOWER_URL": flower,
        "OPS_METRICS_URL": f"{metrics}/metrics",
        "CONSOLE_URL": console,
    }


def share_with_commands(data_dir: Path, started: list[EmbeddedServer]) -> Path:
    """Write DATA_DIR/run.env: the URLs of the servers this run started and of its processes,
    so `pedro-webhooks status`, `send`, `user show`... in another terminal find them."""
    shared = {variable: os.environ[variable] for variable in _started_variables(started)}
    path = data_dir / RUN_ENV
    write_env_file(path, {**shared, **endpoints()})
    return path


def _started_variables(started: list[EmbeddedServer]) -> list[str]:
    return ["DATABASE_URL" if isinstance(server, LocalPostgres) else "REDIS_URL" for server in started]


def print_where_to_look(secrets_file: Path | None, started: list[EmbeddedServer]) -> None:
    where = endpoints()
    embedded = set(_started_variables(started))
    for variable, name in (("DATABASE_URL", "PostgreSQL"), ("REDIS_URL", "Redis")):
        origin = "embedded" if variable in embedded else f"from {variable}"
        click.echo(f"{name}: {masked_url(os.environ[variable])} ({origin})", err=True)
    login = f"FLOWER_BASIC_AUTH in {secrets_file}" if secrets_file else "FLOWER_BASIC_AUTH"
    click.echo(f"receiver: {where['RECEIVER_URL']}/webhooks/clerk and /webhooks/asaas", err=True)
    receiver_metrics = (
        f"{os.environ.get('RECEIVER_METRICS_ADDRESS', '127.0.0.1')}:{os.environ.get('RECEIVER_METRICS_PORT', '9101')}"
    )
    click.echo(f"receiver metrics: http://{receiver_metrics}/metrics", err=True)
    click.echo(f"Flower: {where['FLOWER_URL']} (log in with the user:password of {login})", err=True)
    click.echo(f"metrics for alerts: {where['OPS_METRICS_URL']}", err=True)
    console_login = f"CONSOLE_BASIC_AUTH in {secrets_file}" if secrets_file else "CONSOLE_BASIC_AUTH"
    click.echo(f"console: {where['CONSOLE_URL']} (log in with the user:password of {console_login})", err=True)
    click.echo("in another terminal, from this folder: pedro-webhooks status (it reads .local/run.env)", err=True)


def run_honcho(procfile: str, data_dir: Path) -> None:
    # The Procfile names console scripts (celery, gunicorn) installed beside this interpreter;
    # put them on PATH even when the virtualenv is not activated.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # A local run is for this machine only: the receiver listens on the loopback address.
    env.setdefault("WEB_BIND_HOST", LOCAL_BIND_HOST)
    # Beat's schedule file and gunicorn's control socket go in DATA_DIR: two checkouts on one
    # machine never share them.
    env["RUNTIME_DIR"] = str(data_dir.resolve())
    if not env.get("LOG_FORMAT") and sys.stderr.isatty():
        env["LOG_FORMAT"] = "console"  # honcho pipes the processes' output: say it is for a person
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
