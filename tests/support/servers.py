"""Find (or start) the PostgreSQL and Redis servers the tests talk to.

Order: TEST_DATABASE_URL / TEST_REDIS_URL when set; else 127.0.0.1:5432 / :6379 when they
answer; else servers of the run's own (ops.local.servers), in `.local/` of the project.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from ops.local.servers import LocalPostgres, LocalRedis, RedisOption, answers

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


def postgres_admin_url(stack: ExitStack) -> str:
    if url := os.environ.get("TEST_DATABASE_URL"):
        return url
    if answers("127.0.0.1", 5432):
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    server = LocalPostgres(_scratch_dir(stack, "postgres"))
    url = server.start()
    stack.callback(server.stop)
    return url


def redis_base_url(stack: ExitStack) -> str:
    """A Redis URL without a database number."""
    if url := os.environ.get("TEST_REDIS_URL"):
        return url.rstrip("/").rsplit("/", 1)[0] if url.count("/") > 2 else url
    if answers("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379"
    server = LocalRedis(_scratch_dir(stack, "redis"))
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
def private_redis(**config: RedisOption) -> Iterator[str]:
    """A Redis of the test's own on a free port (never the shared one) with this configuration
    (e.g. appendonly="yes"); its URL (database 0). Stopped and its folder removed at the end."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pw-test-redis-"))
    server = LocalRedis(folder, config={name.replace("_", "-"): value for name, value in config.items()})
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
