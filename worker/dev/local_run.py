"""The `run` command's helpers: embedded servers for missing URLs, local secrets, honcho."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import click

from worker.dev.embedded_servers import EmbeddedPostgres, EmbeddedRedis

EmbeddedServer = EmbeddedPostgres | EmbeddedRedis

LOCAL_BIND_HOST = "127.0.0.1"


def start_missing_servers(data_dir: Path, started: list[EmbeddedServer]) -> None:
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


def ensure_local_secrets(data_dir: Path) -> Path | None:
    """Give a local run webhook secrets, the ingest signing key and Flower credentials of its own
    when they are not set.

    They are kept in DATA_DIR/local-secrets.env (mode 600) and never printed: point a local
    sender (or the tests' signer) at that file.
    """
    made = {
        "CLERK_WEBHOOK_SIGNING_SECRET": lambda: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        "ASAAS_WEBHOOK_TOKEN": lambda: secrets.token_urlsafe(24),
        "FLOWER_BASIC_AUTH": lambda: f"ops:{secrets.token_urlsafe(12)}",
        "INGEST_SIGNING_KEY": lambda: secrets.token_urlsafe(32),
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
    click.echo(f"secrets not set: using the local ones in {path}", err=True)
    return path


def print_where_to_look(secrets_file: Path | None) -> None:
    port = os.environ.get("PORT", "5000")  # honcho gives the first process (web) this port
    flower = f"http://{os.environ.get('FLOWER_ADDRESS', '127.0.0.1')}:{os.environ.get('FLOWER_PORT', '5555')}"
    login = f"FLOWER_BASIC_AUTH in {secrets_file}" if secrets_file else "FLOWER_BASIC_AUTH"
    click.echo(f"receiver: http://127.0.0.1:{port}/webhooks/clerk and /webhooks/asaas", err=True)
    metrics = (
        f"{os.environ.get('RECEIVER_METRICS_ADDRESS', '127.0.0.1')}:{os.environ.get('RECEIVER_METRICS_PORT', '9101')}"
    )
    click.echo(f"receiver metrics: http://{metrics}/metrics", err=True)
    click.echo(f"Flower: {flower} (log in with the user:password of {login})", err=True)


def run_honcho(procfile: str) -> None:
    # The Procfile names console scripts (celery, gunicorn) installed beside this interpreter;
    # put them on PATH even when the virtualenv is not activated.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # A local run is for this machine only: the receiver listens on the loopback address.
    env.setdefault("WEB_BIND_HOST", LOCAL_BIND_HOST)
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
