"""`pedro-webhooks run` with no DATABASE_URL/REDIS_URL: embedded servers, migrations, the
Procfile processes; SIGTERM or Ctrl-C stops every process it started. The Procfile's Flower
refuses to run without credentials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from alembic.script import ScriptDirectory
from pedro_credits import CreditsClient

from ops.local.servers import free_port
from tests.support.databases import create_database, drop_database, libpq_url
from tests.support.servers import PROJECT_ROOT, procfile_command


@pytest.fixture
def data_dir():
    path = PROJECT_ROOT / ".local" / f"test-run-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _assert_flower_requires_the_local_credentials(port: str, data_dir) -> None:
    secrets = dict(line.split("=", 1) for line in (data_dir / "local-secrets.env").read_text().splitlines())
    user, password = secrets["FLOWER_BASIC_AUTH"].split(":", 1)
    url = f"http://127.0.0.1:{port}/api/workers"
    deadline = time.monotonic() + 30
    while True:
        try:
            anonymous = httpx.get(url, timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    assert anonymous.status_code == 401
    assert httpx.get(url, auth=(user, password), timeout=5).status_code == 200


def _assert_the_console_requires_the_local_credentials(port: str, data_dir: Path, log: Path) -> None:
    """`run` prints the console's URL, and its local login (an operator) opens it."""
    secrets = dict(line.split("=", 1) for line in (data_dir / "local-secrets.env").read_text().splitlines())
    user, password = secrets["CONSOLE_BASIC_AUTH"].split(":", 1)
    url = f"http://127.0.0.1:{port}"
    assert f"console: {url} (log in with the user:password of CONSOLE_BASIC_AUTH in" in log.read_text()
    deadline = time.monotonic() + 30
    while True:
        try:
            anonymous = httpx.get(url, timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    assert anonymous.status_code == 401
    page = httpx.get(url, auth=(user, password), timeout=10)
    assert page.status_code == 200 and f"{user} (operator)" in page.text


def _assert_receiver_ready(port: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            break
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                told = f"the receiver never answered on port {port}; the run's log ends:\n{_tail(log)}"
                raise AssertionError(told) from exc
            time.sleep(0.3)
    assert response.json() == {"status": "ready"}, _tail(log)


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _run_env(**changes: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "REDIS_URL",
            "CLERK_WEBHOOK_SIGNING_SECRET",
            "ASAAS_WEBHOOK_TOKEN",
            "FLOWER_BASIC_AUTH",
            "INGEST_SIGNING_KEY",
            "USAGE_SERVICE_KEYS",
            "CONSOLE_BASIC_AUTH",
            "CONSOLE_OPERATORS",
        )
    }
    # Free ports: Flower's, the receiver's metrics, the metrics exporter's, and honcho's base port
    # (the Procfile's first process, web, gets it).
    ports = {
        "FLOWER_PORT": str(free_port()),
        "PORT": str(free_port()),
        "RECEIVER_METRICS_PORT": str(free_port()),
        "OPS_METRICS_PORT": str(free_port()),
        "CONSOLE_PORT": str(free_port()),
    }
    return {**env, **ports, **changes}


@dataclass
class Run:
    process: subprocess.Popen
    seen: dict[int, psutil.Process] = field(default_factory=dict)  # every process seen under it
    stopped_by_itself: bool = False  # it exited after the stop signal, without being killed


@contextmanager
def _running(env: dict[str, str], data_dir: Path, log: Path, *, ctrl_c: bool = False) -> Iterator[Run]:
    """`pedro-webhooks run` until its worker is ready; on exit stop it and wait for it: SIGTERM
    to it, or (`ctrl_c`) SIGINT to its whole process group, as a terminal's Ctrl-C sends it."""
    run = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "--local-dir", str(data_dir), "run", "--data-dir", str(data_dir)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=ctrl_c,  # a process group of its own, like a terminal's foreground job
    )
    state = Run(run)
    seen = state.seen
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and run.poll() is None:
            seen.update({child.pid: child for child in _descendants(psutil.Process(run.pid))})
            if "ready." in log.read_text():  # celery's worker prints "<name> ready."
                break
            time.sleep(0.2)
        assert "ready." in log.read_text(), log.read_text()[-3000:]
        _assert_receiver_ready(env["PORT"], log)
        seen.update({child.pid: child for child in _descendants(psutil.Process(run.pid))})
        yield state
    finally:  # stopped also when the test failed: the command must stop what it started
        if ctrl_c:
            os.killpg(run.pid, signal.SIGINT)
        else:
            run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=60)
            state.stopped_by_itself = True
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def _listening(run: Run) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket a process of the run listens on."""
    found = set()
    for process in run.seen.values():
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_none_alive(seen: dict[int, psutil.Process], timeout: float = 15) -> None:
    """Every process seen is gone (polled until `timeout`: a child may still be exiting)."""
    deadline = time.monotonic() + timeout
    while alive := [p for p in seen.values() if _alive(p)]:
        if time.monotonic() > deadline:
            raise AssertionError(f"still running: {[_describe(p) for p in alive]}")
        time.sleep(0.1)


def _describe(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return f"pid {process.pid}"


def _postmasters(data_dir: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL's processes: started by pg_ctl (detached), found by data folder."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(data_dir / "postgres") in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_run_starts_embedded_servers_and_leaves_nothing_behind(data_dir, tmp_path):
    env, log = _run_env(), tmp_path / "run.log"
    # A run.env left by a run that was killed: `run` never reads it (it would point at servers
    # that are gone); it starts its own servers and writes a new one.
    data_dir.mkdir(parents=True)
    (data_dir / "run.env").write_text(f"DATABASE_URL=postgresql://postgres@127.0.0.1:{free_port()}/gone\n")
    with _running(env, data_dir, log) as run:
        _assert_flower_requires_the_local_credentials(env["FLOWER_PORT"], data_dir)
        _assert_the_console_requires_the_local_credentials(env["CONSOLE_PORT"], data_dir, log)
        assert "started embedded PostgreSQL" in log.read_text() and "started embedded Redis" in log.read_text()
        postmasters = _postmasters(data_dir)
        assert postmasters, "the embedded PostgreSQL is not running"
        run.seen.update({p.pid: p for p in postmasters})
        _assert_a_second_terminal_finds_the_run(env, data_dir, log)
        _assert_a_client_with_the_local_service_key_is_answered(data_dir)
        _assert_runtime_files_are_in_the_data_dir(data_dir)
    assert run.stopped_by_itself, log.read_text()[-3000:]
    _assert_none_alive(run.seen)
    assert not (data_dir / "run.env").exists()  # removed when the run ends: no stale URLs
    secrets_file = data_dir / "local-secrets.env"
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
    local = dict(line.split("=", 1) for line in secrets_file.read_text().splitlines())
    assert set(local) == {
        "CLERK_WEBHOOK_SIGNING_SECRET",
        "ASAAS_WEBHOOK_TOKEN",
        "FLOWER_BASIC_AUTH",
        "INGEST_SIGNING_KEY",
        "USAGE_SERVICE_KEYS",
        "CONSOLE_BASIC_AUTH",
    }
    for secret in local.values():
        assert secret not in log.read_text()


def _assert_a_second_terminal_finds_the_run(env: dict[str, str], data_dir: Path, log: Path) -> None:
    """The URLs in use are printed, and `status` in another process (no DATABASE_URL or
    REDIS_URL set) reads them from DATA_DIR/run.env."""
    shared = dict(line.split("=", 1) for line in (data_dir / "run.env").read_text().splitlines())
    assert oct((data_dir / "run.env").stat().st_mode & 0o777) == "0o600"
    assert shared["RECEIVER_URL"] == f"http://127.0.0.1:{env['PORT']}"
    printed = log.read_text()
    assert f"PostgreSQL: {shared['DATABASE_URL']} (embedded)" in printed
    assert f"Redis: {shared['REDIS_URL']} (embedded)" in printed
    assert f"receiver: http://127.0.0.1:{env['PORT']}/webhooks/clerk" in printed
    assert f"metrics for alerts: http://127.0.0.1:{env['OPS_METRICS_PORT']}/metrics" in printed
    status = subprocess.run(
        [sys.executable, "-m", "ops.cli", "--local-dir", str(data_dir), "status", "--json"],
        env={k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    servers = json.loads(status.stdout)["servers"]
    assert [s["variable"] for s in servers] == [
        f"DATABASE_URL (from {data_dir / 'run.env'})",
        f"REDIS_URL (from {data_dir / 'run.env'})",
    ]
    assert [s["state"] for s in servers] == ["ok", "ok"]
    metrics = httpx.get(f"http://127.0.0.1:{env['OPS_METRICS_PORT']}/metrics", timeout=10)
    assert "pedro_webhooks_database_up 1.0" in metrics.text


def _assert_a_client_with_the_local_service_key_is_answered(data_dir: Path) -> None:
    """`run` made a service key (`local`): a client signing with it gets signed answers."""
    shared = dict(line.split("=", 1) for line in (data_dir / "run.env").read_text().splitlines())
    local = dict(line.split("=", 1) for line in (data_dir / "local-secrets.env").read_text().splitlines())
    service, key = local["USAGE_SERVICE_KEYS"].split(":", 1)
    client = CreditsClient(shared["REDIS_URL"], service, key)
    try:
        assert client.outcome("nothing-sent-with-this-key", wait=60)["status"] == "unknown"
    finally:
        client.close()


def _assert_runtime_files_are_in_the_data_dir(data_dir: Path) -> None:
    """Beat's schedule and gunicorn's control socket live in DATA_DIR: another checkout's run
    has its own."""
    deadline = time.monotonic() + 20
    while not list(data_dir.glob("pedro-webhooks-celerybeat-schedule*")):
        assert time.monotonic() < deadline, sorted(p.name for p in data_dir.iterdir())
        time.sleep(0.2)
    while not (data_dir / "gunicorn.ctl").exists():
        assert time.monotonic() < deadline, sorted(p.name for p in data_dir.iterdir())
        time.sleep(0.2)


def test_run_uses_the_servers_it_is_given_and_migrates(data_dir, tmp_path, admin_url, redis_urls):
    database_url = create_database(admin_url, prefix="pw_run")
    try:
        env, log = _run_env(DATABASE_URL=database_url, REDIS_URL=redis_urls["scratch"]), tmp_path / "run.log"
        with _running(env, data_dir, log) as run:
            assert "started embedded" not in log.read_text()
            # Local only: the webhook port and the receiver's metrics listen on the loopback address.
            listening = _listening(run)
            assert ("127.0.0.1", int(env["PORT"])) in listening, listening
            assert ("127.0.0.1", int(env["RECEIVER_METRICS_PORT"])) in listening, listening
            assert not {address for address in listening if address[0] != "127.0.0.1"} & {
                ("0.0.0.0", int(env["PORT"])),
                ("::", int(env["PORT"])),
            }
            shared = (data_dir / "run.env").read_text()
            assert "DATABASE_URL" not in shared and "REDIS_URL" not in shared  # the caller's own: not repeated
        assert run.stopped_by_itself, log.read_text()[-3000:]
        _assert_none_alive(run.seen)
        with psycopg.connect(libpq_url(database_url)) as conn:
            heads = conn.execute("SELECT version_num FROM ingest.alembic_version").fetchall()
        assert heads == [(ScriptDirectory(str(PROJECT_ROOT / "migrations")).get_current_head(),)]
    finally:
        drop_database(admin_url, database_url)


def test_ctrl_c_stops_every_process_and_the_command_exits(data_dir, tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the command,
    honcho and every Procfile process get it at once. All of them stop, the embedded servers
    too, and the command exits by itself."""
    env, log = _run_env(), tmp_path / "run.log"
    with _running(env, data_dir, log, ctrl_c=True) as run:
        postmasters = _postmasters(data_dir)
        assert postmasters, "the embedded PostgreSQL is not running"
        run.seen.update({p.pid: p for p in postmasters})
        assert len(run.seen) > len(postmasters) + 4  # honcho and the four Procfile processes, at least
    assert run.stopped_by_itself, log.read_text()[-3000:]
    _assert_none_alive(run.seen)
    assert "stopping embedded PostgreSQL" in log.read_text() and "stopping embedded Redis" in log.read_text()


@pytest.mark.parametrize("credentials", [None, ""], ids=["unset", "empty"])
def test_flower_refuses_to_start_without_credentials(credentials):
    env = {key: value for key, value in os.environ.items() if key != "FLOWER_BASIC_AUTH"}
    if credentials is not None:
        env["FLOWER_BASIC_AUTH"] = credentials
    env.update(FLOWER_PORT=str(free_port()), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    # As honcho runs a Procfile line: through the shell.
    result = subprocess.run(
        procfile_command("flower"), shell=True, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH (user:password) is not set: Flower does not run without authentication" in result.stderr
