"""The TypeScript client (clients/typescript) installed, built and tested against a real worker.

    .venv/bin/python -m tests.support.typescript_client   # what `npm test` runs after building

Alone it makes a scratch database and Redis database numbers, starts a `usage` worker, opens the
users of clients/typescript/test/users.json through the ledger, runs `node --test` with the URLs
and keys in the environment, checks PostgreSQL and cleans up; tests/clients/test_typescript_client.py
does the same against the pytest session's worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tests.support.servers import PROJECT_ROOT
from tests.support.stamps import locked, run, run_if_changed

PACKAGE = PROJECT_ROOT / "clients" / "typescript"
USERS = json.loads((PACKAGE / "test" / "users.json").read_text())
INSTALLED_STAMP = PACKAGE / "node_modules" / ".pedro-webhooks-installed"  # sha256 of package-lock.json
BUILT_STAMP = PACKAGE / "build" / ".pedro-webhooks-built"  # sha256 of what dist/ and build/ are made from
SERVICE = "tests"  # the service the node tests sign as (tests/conftest.py USAGE_TEST_KEYS)
OTHER_SERVICE = "other"
NODE_TESTS_TIMEOUT = 600


def prepare(npm: str, node: str) -> dict[str, float]:
    """`npm ci` when package-lock.json changed, then build the package (dist/) and its tests
    (build/) when a source changed; once at a time, even for concurrent test processes (a lock
    file beside node_modules). The seconds each step that ran took."""
    timings: dict[str, float] = {}
    with locked(PACKAGE / ".install.lock"):
        steps = (
            ("npm ci", INSTALLED_STAMP, [PACKAGE / "package-lock.json"], lambda: _npm(npm, "ci")),
            ("tsc", BUILT_STAMP, _sources(), lambda: _build(node)),
        )
        for name, stamp, inputs, step in steps:
            seconds = run_if_changed(stamp, inputs, PACKAGE, step)
            if seconds is not None:
                timings[name] = seconds
    return timings


def _npm(npm: str, command: str) -> None:
    run([npm, command, "--no-audit", "--no-fund"], PACKAGE)


def _build(node: str) -> None:
    tsc = str(PACKAGE / "node_modules" / "typescript" / "bin" / "tsc")
    for folder, config in (("dist", "tsconfig.json"), ("build", "tsconfig.test.json")):
        shutil.rmtree(PACKAGE / folder, ignore_errors=True)
        run([node, tsc, "-p", config], PACKAGE)


def _sources() -> list[Path]:
    found = [PACKAGE / name for name in ("package-lock.json", "tsconfig.json", "tsconfig.test.json")]
    for folder in ("src", "test"):
        found += sorted(path for path in (PACKAGE / folder).rglob("*") if path.is_file())
    return found


def node_test_files() -> list[Path]:
    return sorted((PACKAGE / "build" / "test").glob("*.test.js"))


@contextmanager
def tls_redis(openssl: str, folder: Path) -> Iterator[dict[str, str]]:
    """A Redis of its own (never the shared one) taking TLS on one port and plain TCP on
    another, with a self-signed certificate for localhost; the node tests' variables for it."""
    from ops.local.servers import free_port
    from tests.support.servers import private_redis

    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    certificate = ["-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"]
    names = ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    subprocess.run(
        [openssl, "req", *certificate, *names, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    tls = {"tls_port": str(port), "tls_cert_file": str(cert), "tls_key_file": str(key)}
    with private_redis(**tls, tls_ca_cert_file=str(cert), tls_auth_clients="no") as plain_url:
        yield {
            "CREDITS_TEST_TLS_REDIS_URL": f"rediss://localhost:{port}/0",
            "CREDITS_TEST_TLS_PLAIN_REDIS_URL": plain_url,
            "CREDITS_TEST_TLS_CA_FILE": str(cert),
        }


def node_environment(broker_url: str, idle_url: str, tls: dict[str, str] | None = None) -> dict[str, str]:
    """What the node tests read: the worker's Redis, a Redis database no worker reads (a service
    that is down), a Redis taking TLS (`tls_redis`), and the test services' names and keys."""
    from tests.conftest import USAGE_TEST_KEYS

    return {
        **os.environ,
        **(tls or {}),
        "REDIS_URL": broker_url,
        "CREDITS_SERVICE": SERVICE,
        "CREDITS_SERVICE_KEY": USAGE_TEST_KEYS[SERVICE],
        "CREDITS_TEST_OTHER_SERVICE": OTHER_SERVICE,
        "CREDITS_TEST_OTHER_SERVICE_KEY": USAGE_TEST_KEYS[OTHER_SERVICE],
        "CREDITS_TEST_IDLE_REDIS_URL": idle_url,
    }


def run_node_tests(node: str, env: dict[str, str], options: list[str] | None = None) -> subprocess.CompletedProcess:
    """`node --test` on the built tests (`options` before them, e.g. --test-name-pattern=race);
    its output captured (TAP, with its totals)."""
    command = [node, "--test", *(options or []), *(str(path) for path in node_test_files())]
    return subprocess.run(command, cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=NODE_TESTS_TIMEOUT)


def open_balances(factory: sessionmaker[Session]) -> None:
    from tests.support.usage import make_user

    for user in USERS["users"].values():
        make_user(factory, user["clerk_user_id"], credits=user["credits"])


@contextmanager
def locked_balances(factory: sessionmaker[Session]) -> Iterator[None]:
    """The `locked` users' balance rows held FOR UPDATE until the block ends."""
    locked = [user["clerk_user_id"] for user in USERS["users"].values() if user.get("locked")]
    with factory.begin() as session:
        session.execute(
            text('SELECT 1 FROM "CreditBalance" WHERE "clerkUserId" = ANY(:ids) FOR UPDATE'), {"ids": locked}
        )
        yield


def database_problems(factory: sessionmaker[Session]) -> list[str]:
    """What PostgreSQL must hold after the node tests (users.json), and the ledger invariant
    (creditsRemaining == the sum of its ledger deltas, for every balance)."""
    problems = []
    with factory() as session:
        for clerk_id, expected in USERS["expected_balances"].items():
            found = session.scalar(
                text('SELECT "creditsRemaining" FROM "CreditBalance" WHERE "clerkUserId" = :id'), {"id": clerk_id}
            )
            if found != expected:
                problems.append(f"{clerk_id}: balance {found}, expected {expected}")
        for clerk_id, expected in USERS["expected_usage_rows"].items():
            rows = session.scalar(
                text(
                    'SELECT count(*) FROM "UsageHistory" h JOIN "User" u ON u.id = h."userId" WHERE u."clerkId" = :id'
                ),
                {"id": clerk_id},
            )
            if rows != expected:
                problems.append(f"{clerk_id}: {rows} UsageHistory rows, expected {expected}")
        mismatched = session.execute(
            text(
                'SELECT b."clerkUserId", b."creditsRemaining", coalesce(sum(l.delta), 0) FROM "CreditBalance" b '
                "LEFT JOIN ingest.credit_ledger l ON l.credit_balance_id = b.id "
                'GROUP BY b.id HAVING b."creditsRemaining" <> coalesce(sum(l.delta), 0)'
            )
        ).all()
        problems += [f"{row[0]}: balance {row[1]} but ledger {row[2]}" for row in mismatched]
    return problems


def main(node_options: list[str]) -> int:
    """`npm test [-- node options]`: everything the pytest test does, on servers of its own."""
    from messaging.celery_config import USAGE_QUEUE, create_producer
    from models.db import make_engine, make_session_factory
    from tests.support.celery_worker import WorkerProcess
    from tests.support.databases import scratch_environment
    from tests.support.servers import claim_redis_databases

    node, openssl = shutil.which("node"), shutil.which("openssl")
    if node is None or openssl is None:
        print("node and openssl (a certificate for the TLS test) must be on PATH", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        started = time.monotonic()
        settings, redis_base, _ = scratch_environment(stack, DB_LOCK_TIMEOUT_MS="1000")
        (idle,) = stack.enter_context(claim_redis_databases(redis_base, 1))
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        producer = create_producer(settings)
        stack.callback(producer.close)
        worker = WorkerProcess(producer, queues=USAGE_QUEUE, concurrency=2)
        worker.start()
        stack.callback(worker.stop)
        factory = make_session_factory(engine)
        open_balances(factory)
        print(f"worker and database ready in {time.monotonic() - started:.1f} s", flush=True)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pw-ts-tls-")))
        tls = stack.enter_context(tls_redis(openssl, folder))
        env = node_environment(settings.redis_url.get_secret_value(), f"{redis_base}/{idle}", tls)
        with locked_balances(factory):
            started = time.monotonic()
            done = run_node_tests(node, env, node_options)
        print(done.stdout + done.stderr, end="")
        print(f"node tests: {time.monotonic() - started:.1f} s", flush=True)
        if node_options:
            print("PostgreSQL not checked: node options given (the checks expect every test to have run)")
            return done.returncode
        problems = database_problems(factory)
        for problem in problems:
            print(f"PostgreSQL after the node tests: {problem}", file=sys.stderr)
        return 1 if done.returncode != 0 or problems else 0


_TOTALS = {"tests", "pass", "fail", "cancelled", "skipped", "todo"}


def details(done: subprocess.CompletedProcess) -> dict[str, Any]:
    """The totals node's test runner prints last (`# pass N` ...)."""
    totals = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "#" and parts[1] in _TOTALS:
            totals[parts[1]] = int(float(parts[2]))
    return totals


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the worker stopped, the database dropped
    sys.exit(main(sys.argv[1:]))
