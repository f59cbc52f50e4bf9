"""`pedro-webhooks run` with no DATABASE_URL/REDIS_URL: embedded servers, migrations, the
Procfile processes; SIGTERM stops every process it started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from alembic.script import ScriptDirectory

from tests.support.databases import create_database, drop_database, libpq_url
from tests.support.servers import PROJECT_ROOT
from worker.dev.embedded_servers import free_port


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


def _assert_receiver_ready(port: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    assert response.json() == {"checks": {"postgresql": "ok", "redis": "ok"}, "status": "ready"}


def _run_env(**changes: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("DATABASE_URL", "REDIS_URL", "CLERK_WEBHOOK_SIGNING_SECRET", "ASAAS_WEBHOOK_TOKEN", "FLOWER_BASIC_AUTH")
    }
    # Free ports: Flower's, and honcho's base port (the Procfile's first process, web, gets it).
    return {**env, "FLOWER_PORT": str(free_port()), "PORT": str(free_port()), **changes}


@contextmanager
def _running(env: dict[str, str], data_dir: Path, log: Path) -> Iterator[dict[int, psutil.Process]]:
    """`pedro-webhooks run` until its worker is ready; on exit SIGTERM it and wait for it.
    Yields every process seen under it (filled in while it runs)."""
    run = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--data-dir", str(data_dir)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and run.poll() is None:
            seen.update({child.pid: child for child in _descendants(psutil.Process(run.pid))})
            if "ready." in log.read_text():  # celery's worker prints "<name> ready."
                break
            time.sleep(0.2)
        assert "ready." in log.read_text(), log.read_text()[-3000:]
        _assert_receiver_ready(env["PORT"])
        seen.update({child.pid: child for child in _descendants(psutil.Process(run.pid))})
        yield seen
    finally:  # SIGTERM also when the test failed: the command must stop what it started
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()


def _assert_none_alive(seen: dict[int, psutil.Process]) -> None:
    time.sleep(0.5)
    alive = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [p.cmdline() for p in alive]


def test_run_starts_embedded_servers_and_leaves_nothing_behind(data_dir, tmp_path):
    env, log = _run_env(), tmp_path / "run.log"
    with _running(env, data_dir, log) as seen:
        _assert_flower_requires_the_local_credentials(env["FLOWER_PORT"], data_dir)
        assert "started EmbeddedPostgres" in log.read_text() and "started EmbeddedRedis" in log.read_text()
        # Started by pg_ctl (detached): find the embedded postmaster by its data folder.
        postmasters = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(data_dir / "postgres") in " ".join(p.info["cmdline"] or [])
        ]
        assert postmasters, "the embedded PostgreSQL is not running"
        seen.update({p.pid: p for p in postmasters})
    _assert_none_alive(seen)
    secrets_file = data_dir / "local-secrets.env"
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
    clerk_secret = secrets_file.read_text().splitlines()[0].split("=", 1)[1]
    assert clerk_secret not in log.read_text()


def test_run_uses_the_servers_it_is_given_and_migrates(data_dir, tmp_path, admin_url, redis_urls):
    database_url = create_database(admin_url, prefix="pw_run")
    try:
        env, log = _run_env(DATABASE_URL=database_url, REDIS_URL=redis_urls["scratch"]), tmp_path / "run.log"
        with _running(env, data_dir, log) as seen:
            assert "started Embedded" not in log.read_text()
        _assert_none_alive(seen)
        with psycopg.connect(libpq_url(database_url)) as conn:
            heads = conn.execute("SELECT version_num FROM ingest.alembic_version").fetchall()
        assert heads == [(ScriptDirectory(str(PROJECT_ROOT / "migrations")).get_current_head(),)]
    finally:
        drop_database(admin_url, database_url)
