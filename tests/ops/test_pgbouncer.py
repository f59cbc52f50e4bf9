"""The service behind PgBouncer in transaction mode (DB_TRANSACTION_POOLER=true), through a real
pgbouncer started for this module (`require_tool`: skipped by hand without the program, a failure in CI).

What transaction pooling breaks (the `options` startup parameter, prepared statements) and what
models.db does about it: docs/design.md ("Database connections"). Migrations run directly
against PostgreSQL, never through the pooler (docs/operating.md, "Migrations").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from messaging.celery_config import create_producer
from models import migrate
from models.app import User
from models.db import make_engine, make_session_factory
from models.inbox import WebhookInbox
from models.settings import DatabaseSettings, Settings
from tests.support.celery_worker import WorkerProcess
from tests.support.databases import create_database, drop_database, libpq_url, settings_copy
from tests.support.receiver_support import clerk_headers, payload_bytes, receiver_apps
from tests.support.servers import claim_redis_databases
from tests.support.tools import require_tool
from tests.support.usage import credits_client


@pytest.fixture(scope="module", autouse=True)
def pgbouncer() -> str:
    """The program (skipped without it by hand, a failure in CI: tests/support/tools.py)."""
    return require_tool("pgbouncer", "runs a real pooler in transaction mode (apt-get install pgbouncer)")


REGIONAL_TIMEZONE = "America/Sao_Paulo"  # UTC-3: a clock read in it is hours off UTC


@pytest.fixture(scope="module")
def direct_url(admin_url: str) -> Iterator[str]:
    """A database of this module's own, migrated directly (never through the pooler), with a
    regional default timezone, as a server configured for its region would have: a transaction
    that missed the per-transaction settings would be seen."""
    url = create_database(admin_url, prefix="pw_pgbouncer")
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{make_url(url).database}\" SET timezone TO '{REGIONAL_TIMEZONE}'")
    migrate.upgrade(DatabaseSettings(database_url=url))
    yield url
    drop_database(admin_url, url)


@pytest.fixture(scope="module")
def pooled_url(direct_url: str, pgbouncer: str) -> Iterator[str]:
    """The same database through a pgbouncer of this module's own (transaction mode, 2 server
    connections, so client transactions take turns on them)."""
    server = make_url(direct_url)
    folder = Path(tempfile.mkdtemp(prefix="pw-pgbouncer-"))
    folder.chmod(0o755)  # run as root, pgbouncer drops to `nobody`, who must read its config
    port = _free_port()
    password = f" password={server.password}" if server.password else ""
    (folder / "users.txt").write_text(f'"{server.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={server.host} port={server.port or 5432}{password}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 100\n"
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    as_nobody = ["-u", "nobody"] if os.geteuid() == 0 else []  # pgbouncer refuses to run as root
    with (folder / "pgbouncer.log").open("wb") as log:
        process = subprocess.Popen(
            [pgbouncer, *as_nobody, str(folder / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, process)
        yield server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, "pgbouncer exited at start-up"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("pgbouncer did not listen in time")


def _pooled_settings(pooled_url: str, **changes: object) -> DatabaseSettings:
    return DatabaseSettings(database_url=pooled_url, db_transaction_pooler=True, **changes)


def test_pgbouncer_refuses_the_settings_sent_per_connection(pooled_url: str) -> None:
    """Why the setting exists: without it the engine cannot even connect through PgBouncer."""
    engine = make_engine(DatabaseSettings(database_url=pooled_url))
    try:
        with pytest.raises(sa_exc.OperationalError, match="unsupported startup parameter"), engine.connect():
            pass
    finally:
        engine.dispose()


def test_every_transaction_runs_in_utc_with_the_lock_timeout_and_leaves_nothing_behind(
    pooled_url: str, direct_url: str
) -> None:
    engine = make_engine(_pooled_settings(pooled_url, db_lock_timeout_ms=1234), pool_size=8)
    factory = make_session_factory(engine)

    def one_transaction(_: int) -> tuple[str, str, datetime]:
        with factory.begin() as session:
            row = session.execute(
                text(
                    "SELECT current_setting('timezone'), current_setting('lock_timeout'), CURRENT_TIMESTAMP::timestamp"
                )
            ).one()
            return row[0], row[1], row[2]

    try:
        with ThreadPoolExecutor(8) as pool:
            seen = list(pool.map(one_transaction, range(80)))
    finally:
        engine.dispose()
    assert {(zone, lock) for zone, lock, _ in seen} == {("UTC", "1234ms")}
    utc_now = datetime.now(UTC).replace(tzinfo=None)
    assert all(abs(clock - utc_now) < timedelta(minutes=5) for _, _, clock in seen)  # Prisma's defaults agree
    # The pool's 2 server connections ran all of the above; a client that sets nothing sees the
    # database's own defaults on them: the settings lasted one transaction only.
    for _ in range(4):
        with psycopg.connect(libpq_url(pooled_url), prepare_threshold=None) as plain:
            assert plain.execute("SELECT current_setting('timezone'), current_setting('lock_timeout')").fetchone() == (
                REGIONAL_TIMEZONE,
                "0",
            )


def test_a_statement_run_again_on_another_server_connection_works(pooled_url: str) -> None:
    """Two clients take turns on PgBouncer's 2 server connections: the same statement, run many
    times, lands on a server connection it was never run on. psycopg's default (prepare after 5
    runs) fails there; the engine never prepares."""
    query = text("SELECT count(*) FROM pg_class WHERE relname = :name")

    def take_turns(engine) -> None:
        with engine.connect() as first, engine.connect() as second:
            for _ in range(20):
                second.execute(text("SELECT 1"))  # holds a server connection for its transaction
                first.execute(query, {"name": "x"})
                first.commit()
                second.commit()
                first.execute(query, {"name": "x"})
                first.commit()

    psycopg_default = create_engine(_pooled_settings(pooled_url).database_url.get_secret_value(), pool_size=2)
    try:
        with pytest.raises(sa_exc.ProgrammingError, match="prepared statement"):
            take_turns(psycopg_default)
    finally:
        psycopg_default.dispose()
    engine = make_engine(_pooled_settings(pooled_url), pool_size=2)
    try:
        take_turns(engine)
    finally:
        engine.dispose()


@pytest.mark.celery_worker
def test_a_delivery_and_a_debit_go_through_receiver_and_worker_behind_pgbouncer(
    pooled_url: str, direct_url: str, settings: Settings, servers: tuple[str, str]
) -> None:
    """The receiver stores and enqueues, the worker creates the user (advisory locks included)
    and applies a debit: every connection of both goes through PgBouncer."""
    with claim_redis_databases(servers[1], 1) as (broker,):
        pooled = settings_copy(
            settings, database_url=pooled_url, db_transaction_pooler=True, redis_url=f"{servers[1]}/{broker}"
        )
        producer = create_producer(pooled)
        worker = WorkerProcess(
            producer,
            env={"DATABASE_URL": pooled_url, "DB_TRANSACTION_POOLER": "true", "REDIS_URL": f"{servers[1]}/{broker}"},
        )
        worker.start()
        try:
            body = payload_bytes("clerk/user.created")
            with receiver_apps(pooled) as make_app:
                answer = make_app().test_client().post("/webhooks/clerk", data=body, headers=clerk_headers(body))
            assert answer.status_code == 200
            clerk_id = _processed_user(direct_url)
            client = credits_client(producer.conf.broker_url)
            try:
                assert client.debit(clerk_id, "AI_TEXT_CHAT", "pgbouncer-debit-1", cost=1)["status"] == "applied"
            finally:
                client.close()
        finally:
            worker.stop()
            producer.close()


def _processed_user(direct_url: str, timeout: float = 30) -> str:
    """Read directly (not through the pooler): the inbox row processed and its user created."""
    engine = make_engine(DatabaseSettings(database_url=direct_url))
    try:
        deadline = time.monotonic() + timeout
        with make_session_factory(engine)() as session:
            while time.monotonic() < deadline:
                statuses = session.scalars(select(WebhookInbox.status)).all()
                if statuses == ["processed"]:
                    return session.scalars(select(User.clerk_id)).one()
                session.rollback()
                time.sleep(0.1)
        raise AssertionError(f"inbox rows {statuses}, not processed in time")
    finally:
        engine.dispose()
