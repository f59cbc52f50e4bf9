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

import httpx
import psutil
import pytest

from tests.support.servers import PROJECT_ROOT
from worker.embedded_servers import free_port


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


def test_run_starts_embedded_servers_and_leaves_nothing_behind(data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.pop("CLERK_WEBHOOK_SIGNING_SECRET", None)
    env.pop("ASAAS_WEBHOOK_TOKEN", None)
    env.pop("FLOWER_BASIC_AUTH", None)
    env["FLOWER_PORT"] = str(free_port())
    env["PORT"] = str(free_port())  # honcho's base port (web gets it)
    log = tmp_path / "run.log"
    run = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--data-dir", str(data_dir)],
        cwd=PROJECT_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and run.poll() is None:
            for child in _descendants(psutil.Process(run.pid)):
                seen[child.pid] = child
            if "ready." in log.read_text():  # celery's worker prints "<name> ready."
                break
            time.sleep(0.2)
        text = log.read_text()
        assert "ready." in text, text[-3000:]
        _assert_flower_requires_the_local_credentials(env["FLOWER_PORT"], data_dir)
        _assert_receiver_ready(env["PORT"])
        assert "started EmbeddedPostgres" in text and "started EmbeddedRedis" in text
        # Started by pg_ctl (detached): find the embedded postmaster by its data folder.
        postmasters = [p for p in psutil.process_iter(["cmdline"])
                       if str(data_dir / "postgres") in " ".join(p.info["cmdline"] or [])]
        assert postmasters, "the embedded PostgreSQL is not running"
        seen.update({p.pid: p for p in postmasters})
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode is not None
    time.sleep(0.5)
    alive = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [p.cmdline() for p in alive]
    secrets_file = data_dir / "local-secrets.env"
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
    clerk_secret = secrets_file.read_text().splitlines()[0].split("=", 1)[1]
    assert clerk_secret not in log.read_text()
