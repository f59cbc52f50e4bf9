"""Lookups of storage objects by pathname go through the service's own index
(`storage_pathnames`), kept in the same transaction as the rows, never a scan of Prisma's
`StorageObject`; migration 0006 builds that index from the rows already there."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import select, text

from models import migrate
from models.app import StorageObject
from models.usage import StoragePathname
from tests.support.databases import create_database, drop_database, libpq_url, settings_copy
from tests.support.usage import make_user
from worker.usage import storage

BLOB = {"url": "https://blob.example/u/a.png", "name": "a.png", "size": 10, "content_type": "image/png"}


def _record(factory, pathname: str, **changes):
    with factory.begin() as session:
        return storage.record_object(session, storage.StorageRecord("user_a", pathname=pathname, **{**BLOB, **changes}))


def _delete(factory, **target):
    with factory.begin() as session:
        return storage.delete_object(session, **target)


def _index(factory) -> dict[str, str]:
    with factory() as session:
        return {row.pathname: row.storage_object_id for row in session.scalars(select(StoragePathname))}


def test_record_and_delete_keep_the_index_pointing_at_the_latest_row(session_factory):
    make_user(session_factory)
    first = _record(session_factory, "u/a.png")["storage_object_id"]
    assert _index(session_factory) == {"u/a.png": first}
    assert _record(session_factory, "u/a.png", size=20) == {"status": "updated", "storage_object_id": first}
    deleted = _delete(session_factory, pathname="u/a.png")
    assert (deleted["status"], deleted["storage_object_id"]) == ("deleted", first)
    again = _delete(session_factory, pathname="u/a.png")
    assert (again["status"], again["deleted_at"]) == ("already_deleted", deleted["deleted_at"])
    second = _record(session_factory, "u/a.png")
    assert second["status"] == "recorded" and second["storage_object_id"] != first
    assert _index(session_factory) == {"u/a.png": second["storage_object_id"]}


def test_lookups_by_pathname_use_indexes_only(session_factory):
    """With thousands of rows and fresh statistics, the planner reads `StorageObject` by primary
    key: no sequential scan of it, whichever pathname is asked for."""
    make_user(session_factory)
    with session_factory.begin() as session:
        user_id = session.scalar(text('SELECT id FROM "User"'))
        session.execute(
            text(
                'INSERT INTO "StorageObject" (id, "userId", "clerkUserId", url, pathname, name, size, '
                "\"createdAt\", \"updatedAt\") SELECT 'obj' || n, :user_id, 'user_a', 'https://b/' || n, "
                "'p/' || n, 'f', n, now(), now() FROM generate_series(1, 5000) AS n"
            ),
            {"user_id": user_id},
        )
        session.execute(
            text(
                "INSERT INTO ingest.storage_pathnames (provider, pathname, storage_object_id) "
                'SELECT provider, pathname, id FROM "StorageObject"'
            )
        )
    with session_factory.begin() as session:
        session.execute(text('ANALYZE "StorageObject"'))
        session.execute(text("ANALYZE ingest.storage_pathnames"))
    with session_factory() as session:
        statement = storage.latest_object_query("vercel_blob", "p/4321")
        compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(session.execute(text(f"EXPLAIN {compiled}")).scalars())
        found = session.scalar(statement)
    assert found is not None and found.id == "obj4321"
    assert "StorageObject" in plan and "Seq Scan" not in plan, plan
    assert _delete(session_factory, pathname="p/77")["storage_object_id"] == "obj77"


@pytest.fixture
def database_at_0005(admin_url, settings):
    url = create_database(admin_url, prefix="pw_mig")
    scratch = settings_copy(settings, database_url=url)
    migrate.upgrade(scratch, "0005")
    yield scratch, libpq_url(url)
    drop_database(admin_url, url)


def test_migration_0006_backfills_the_index_and_the_granted_balances(database_at_0005):
    scratch, url = database_at_0005
    with psycopg.connect(url) as conn:
        conn.execute(
            """INSERT INTO "User" (id, "clerkId", "createdAt", "updatedAt") VALUES ('u1', 'user_a', now(), now());
            INSERT INTO "CreditBalance" (id, "userId", "clerkUserId", "creditsRemaining", "lastSyncedAt",
                "createdAt", "updatedAt") VALUES ('b1', 'u1', 'user_a', 0, now(), now(), now());
            INSERT INTO "StorageObject" (id, "userId", "clerkUserId", url, pathname, name, size, "deletedAt",
                "createdAt", "updatedAt") VALUES
                ('old', 'u1', 'user_a', 'x', 'same', 'n', 1, now(), now() - interval '1 day', now()),
                ('live', 'u1', 'user_a', 'x', 'same', 'n', 1, NULL, now() - interval '2 days', now()),
                ('gone', 'u1', 'user_a', 'x', 'deleted', 'n', 1, now(), now(), now());
            INSERT INTO ingest.credit_ledger (user_id, clerk_user_id, credit_balance_id, delta, balance_after,
                kind, idempotency_key, reference)
                VALUES ('u1', 'user_a', 'b1', 500, 500, 'grant', 'grant:asaas:pay_1', 'asaas payment pay_1');
            INSERT INTO ingest.payment_credits (provider, payment_id, clerk_user_id, credits_granted, granted_at)
                VALUES ('asaas', 'pay_1', 'user_a', 500, now()), ('asaas', 'pay_2', NULL, 0, NULL);"""
        )
    migrate.upgrade(scratch)
    with psycopg.connect(url) as conn:
        index = dict(conn.execute("SELECT pathname, storage_object_id FROM ingest.storage_pathnames").fetchall())
        balances = dict(conn.execute("SELECT payment_id, credit_balance_id FROM ingest.payment_credits").fetchall())
    assert index == {"same": "live", "deleted": "gone"}  # the live row, else the latest deleted one
    assert balances == {"pay_1": "b1", "pay_2": None}
    migrate.downgrade(scratch, "0005")  # and back down cleanly
    migrate.upgrade(scratch)


def test_storage_object_rows_are_not_indexed_by_prisma(session_factory):
    """The index lives in the service schema only: Prisma's table keeps exactly its own indexes."""
    with session_factory() as session:
        names = set(session.scalars(text("SELECT indexname FROM pg_indexes WHERE tablename = 'StorageObject'")))
    assert not any("pathname" in name.lower() for name in names)
    assert StorageObject.__table__.schema is None
