"""`pedro-webhooks db upgrade [REV]`, `db downgrade REV` and `db current`, as an operator runs them
(the installed console script, in a process of its own), against a fresh database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

from tests.support.catalog import describe_schema
from tests.support.databases import create_database, drop_database, libpq_url
from tests.support.servers import PROJECT_ROOT

COMMAND = Path(sys.executable).parent / "pedro-webhooks"  # the console script pip installed
HEAD = ScriptDirectory(str(PROJECT_ROOT / "migrations")).get_current_head()


@pytest.fixture
def database_url(admin_url):
    url = create_database(admin_url, prefix="pw_cli")
    yield url
    drop_database(admin_url, url)


@pytest.fixture
def db(database_url, redis_urls):
    """Run `pedro-webhooks db ARGS...` with the fresh database as DATABASE_URL."""
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_urls["scratch"]}
    env.pop("SERVICE_SCHEMA", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(COMMAND), "db", *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result

    return run


def _version(database_url: str) -> list[str]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM ingest.alembic_version")]


def _public_tables(database_url: str) -> set[str]:
    return {name for name, kind in describe_schema(libpq_url(database_url))["relations"] if kind == "r"}


def test_upgrade_current_and_downgrade_on_a_fresh_database(db, database_url):
    assert COMMAND.exists(), f"{COMMAND} is not installed (pip install -e .)"
    assert db("current").stdout.strip() == ""  # nothing applied yet

    db("upgrade")
    assert _version(database_url) == [HEAD]
    assert db("current").stdout.strip() == f"{HEAD} (head)"
    assert {"User", "CreditBalance", "UsageHistory", "Plan", "SubscriptionEvent"} <= _public_tables(database_url)

    db("downgrade", "0001")
    assert _version(database_url) == ["0001"]
    assert "CreditBalance" in _public_tables(database_url)  # 0001 is the Prisma schema itself

    db("downgrade", "base")  # everything the migrations made, but Alembic's (empty) version table
    assert db("current").stdout.strip() == ""
    assert _public_tables(database_url) == set() and _version(database_url) == []

    db("upgrade", "0002")
    assert _version(database_url) == ["0002"]
    db("upgrade")
    assert db("current").stdout.strip() == f"{HEAD} (head)"


def test_without_database_url_the_command_names_it_and_fails(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [str(COMMAND), "db", "current"],
        env=env,
        cwd=tmp_path,  # no .local/run.env of a local run to read it from
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2  # a start-up error
    assert result.stderr == "Error: configuration error: DATABASE_URL is not set\n"  # REDIS_URL is not needed
