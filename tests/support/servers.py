"""Find (or start) the PostgreSQL and Redis servers the tests talk to.

Order: TEST_DATABASE_URL / TEST_REDIS_URL when set; else 127.0.0.1:5432 / :6379 when they
answer; else the embedded servers from pip (the `embedded` extra), in `.local/` of the project.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def procfile_commands() -> dict[str, str]:
    """The Procfile's processes and their command lines, as the platform reads them."""
    commands = {}
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        name, separator, command = line.partition(":")
        if separator and name.strip() and not line.lstrip().startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def procfile_command(name: str) -> str:
    commands = procfile_commands()
    assert name in commands, f"the Procfile has no {name} process"
    return commands[name]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def postgres_admin_url(stack: ExitStack) -> str:
    if url := os.environ.get("TEST_DATABASE_URL"):
        return url
    if _answers("127.0.0.1", 5432):
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    from ops.local.servers import EmbeddedPostgres

    server = EmbeddedPostgres(_scratch_dir(stack, "postgres"))
    url = server.start()
    stack.callback(server.stop)
    return url


def redis_base_url(stack: ExitStack) -> str:
    """A Redis URL without a database number."""
    if url := os.environ.get("TEST_REDIS_URL"):
        return url.rstrip("/").rsplit("/", 1)[0] if url.count("/") > 2 else url
    if _answers("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379"
    from ops.local.servers import EmbeddedRedis

    server = EmbeddedRedis(_scratch_dir(stack, "redis"))
    url = server.start()
    stack.callback(server.stop)
    return url.rsplit("/", 1)[0]


@contextmanager
def claim_redis_databases(base_url: str, count: int) -> Iterator[list[int]]:
    """Claim `count` Redis database numbers (1..15) with expiring locks kept in database 0."""
    client = redis.Redis.from_url(f"{base_url}/0")
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    claimed: list[int] = []
    try:
        for number in range(1, 16):
            if client.set(f"pedro-webhooks:test-db-claim:{number}", token, nx=True, ex=3 * 3600):
                claimed.append(number)
                if len(claimed) == count:
                    break
        if len(claimed) < count:
            raise RuntimeError("no free Redis database numbers: too many test runs at once")
        for number in claimed:
            redis.Redis.from_url(f"{base_url}/{number}").flushdb()
        yield claimed
    finally:
        for number in claimed:
            key = f"pedro-webhooks:test-db-claim:{number}"
            if client.get(key) == token.encode():
                client.delete(key)
        client.close()


def _scratch_dir(stack: ExitStack, name: str) -> Path:
    path = PROJECT_ROOT / ".local" / f"test-{name}-{uuid.uuid4().hex[:8]}"
    stack.callback(shutil.rmtree, path, True)
    return path


@contextmanager
def private_redis(*options: str) -> Iterator[str]:
    """A redis-server of the test's own on a free port (never the shared one), with these
    command-line options (e.g. "--appendonly", "yes"); its URL (database 0). Stopped at the end.
    Its data folder is a temporary one, removed afterwards."""
    import subprocess
    import tempfile
    import time

    from ops.local.servers import free_port

    port = free_port()
    folder = tempfile.mkdtemp(prefix="pw-test-redis-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
    process = subprocess.Popen([*command, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _answers("127.0.0.1", port):
            assert process.poll() is None, f"redis-server {' '.join(options)} exited with {process.returncode}"
            assert time.monotonic() < deadline, "redis-server did not start in time"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)
