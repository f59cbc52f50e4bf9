"""`pedro-webhooks status`: servers (passwords masked), migration, queues, inbox counts, the
oldest pending row; and `check`."""

from __future__ import annotations

import json

from sqlalchemy import text, update

from messaging.fallback_store import STREAM as FALLBACK_STREAM
from models.inbox import WebhookInbox
from ops.local.local_env import write_env_file
from tests.support.billing import add_user, asaas_event
from tests.support.cli import invoke
from tests.support.inbox import deliver, payload, store


def test_status_shows_servers_migration_queues_and_the_inbox(session_factory, settings, redis_urls):
    add_user(session_factory)
    deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))  # needs_attention
    pending = store(session_factory, "clerk", payload("clerk/user.deleted"))
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == pending)
            .values(received_at=text("now() - interval '7 minutes'"))
        )
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert [(s["name"], s["state"], s["variable"]) for s in status["servers"]] == [
        ("PostgreSQL", "ok", "DATABASE_URL"),
        ("Redis", "ok", "REDIS_URL"),
    ]
    assert status["servers"][1]["url"] == redis_urls["broker"]
    assert status["migration"]["up_to_date"] and status["migration"]["database"] == status["migration"]["head"]
    assert set(status["queues"]) == {"webhooks", "usage", "maintenance"}  # every queue the workers serve
    assert status["inbox"]["by_status"] == {
        "pending": 1,
        "processed": 1,
        "ignored": 0,
        "unmatched": 0,
        "needs_attention": 1,
        "failed": 0,
    }
    assert 420 <= status["inbox"]["oldest_pending_age_seconds"]["clerk"] < 600

    printed = invoke("status").output
    assert "PostgreSQL ok" in printed and "up to date" in printed
    assert "pending          1     7m" in printed and "needs_attention  1" in printed
    assert "oldest pending by source: clerk 7m" in printed


def test_status_masks_passwords_and_names_where_a_url_came_from(session_factory, settings, tmp_path, monkeypatch):
    """A URL read from .local/run.env (what `run` writes) is shown with its origin; a password is
    never printed."""
    url = settings.database_url.get_secret_value().replace(
        "postgresql+psycopg://postgres@", "postgresql://postgres:pw-9f3a@"
    )
    monkeypatch.delenv("DATABASE_URL")
    write_env_file(tmp_path / "run.env", {"DATABASE_URL": url, "RECEIVER_URL": "http://127.0.0.1:5999"})
    result = invoke("status", "--json", local_dir=tmp_path)
    assert "pw-9f3a" not in result.output
    status = json.loads(result.output)
    assert status["servers"][0]["variable"] == f"DATABASE_URL (from {tmp_path / 'run.env'})"
    assert status["servers"][0]["url"].startswith("postgresql://postgres:***@")
    assert status["endpoints"]["receiver"] == "http://127.0.0.1:5999"


def test_status_exits_1_when_the_database_is_behind_the_code(session_factory, settings):
    with session_factory.begin() as session:
        session.execute(text("UPDATE ingest.alembic_version SET version_num = '0004'"))
    try:
        result = invoke("status")
        assert result.exit_code == 1 and "database at 0004" in result.output and "BEHIND" in result.output
    finally:
        with session_factory.begin() as session:
            session.execute(
                text("UPDATE ingest.alembic_version SET version_num = :head"),
                {"head": json.loads(invoke("status", "--json").output)["migration"]["head"]},
            )


def test_check_says_both_servers_answer(settings):
    result = invoke("check")
    assert (
        result.exit_code == 0 and result.output.strip() == "ok: PostgreSQL (DATABASE_URL) and Redis (REDIS_URL) answer"
    )
    assert invoke("check", "--quiet").output == ""


def test_status_on_a_database_never_migrated_says_so(admin_url, monkeypatch):
    from tests.support.databases import create_database, drop_database

    url = create_database(admin_url, prefix="pw_status")
    try:
        monkeypatch.setenv("DATABASE_URL", url)
        result = invoke("status")
        assert result.exit_code == 1
        assert "migration: database at nothing" in result.output and "BEHIND" in result.output
    finally:
        drop_database(admin_url, url)


def test_status_shows_the_deliveries_waiting_in_the_fallback_store(
    session_factory, redis_urls, redis_client, monkeypatch
):
    """What the receiver queued while PostgreSQL was down and no worker has stored yet."""
    monkeypatch.setenv("REDIS_URL", redis_urls["scratch"])  # no worker drains it
    assert json.loads(invoke("status", "--json").output)["fallback_store"] == {"entries": 0, "oldest_age_seconds": None}
    seconds, _ = redis_client.time()
    redis_client.xadd(FALLBACK_STREAM, {"f": "v"}, id=f"{(seconds - 180) * 1000}-0")  # added 3 minutes ago
    redis_client.xadd(FALLBACK_STREAM, {"f": "v"})

    fallback = json.loads(invoke("status", "--json").output)["fallback_store"]
    assert fallback["entries"] == 2 and 180 <= fallback["oldest_age_seconds"] < 300
    assert "fallback store: 2 waiting, oldest 3m" in invoke("status").output
