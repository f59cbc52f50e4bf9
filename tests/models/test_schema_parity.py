"""`alembic upgrade head` builds `public` exactly as Prisma's own DDL does, and nothing more."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from models import migrate
from tests.support.catalog import describe_schema
from tests.support.databases import create_database, drop_database, libpq_url, settings_copy

REFERENCE_DDL = Path(__file__).resolve().parents[1] / "fixtures" / "prisma-reference.sql"


@contextmanager
def _databases(admin_url: str) -> Iterator[Callable[[], str]]:
    """Make empty databases on demand; drop them all at the end."""
    created: list[str] = []

    def make() -> str:
        url = create_database(admin_url, prefix="pw_scratch")
        created.append(url)
        return url

    try:
        yield make
    finally:
        for url in created:
            drop_database(admin_url, url)


@pytest.fixture
def fresh_database(admin_url):
    with _databases(admin_url) as make:
        yield make


@pytest.fixture(scope="module")
def migrated_and_reference(admin_url, settings):
    """Prisma's reference DDL in one database, the migrations in another, both described once
    for the module: the tests below only read the descriptions."""
    with _databases(admin_url) as make:
        reference_url = make()
        with psycopg.connect(libpq_url(reference_url), autocommit=True) as conn:
            conn.execute(REFERENCE_DDL.read_text())
        migrated_url = make()
        migrate.upgrade(settings_copy(settings, database_url=migrated_url))
        yield describe_schema(libpq_url(reference_url)), describe_schema(libpq_url(migrated_url))


@pytest.mark.parametrize("aspect", ["relations", "columns", "indexes", "constraints", "enums", "types", "functions"])
def test_public_schema_matches_prisma_reference(migrated_and_reference, aspect):
    reference, migrated = migrated_and_reference
    if aspect != "functions":  # Prisma's DDL creates no function
        assert reference[aspect], f"the catalog query for {aspect} found nothing"
    assert migrated[aspect] == reference[aspect]


def test_the_only_additions_to_public_are_the_ledger_and_overdraft_triggers(migrated_and_reference):
    """The two things the service attaches to a Prisma table: the trigger that records the app's
    own balance changes in the ledger and the overdraft guard (their functions live in the
    service schema: `functions` above stays empty). Prisma does not introspect triggers, so it
    sees no drift."""
    reference, migrated = migrated_and_reference
    assert reference["triggers"] == []
    assert migrated["triggers"] == [
        ("pedro_webhooks_credit_ledger", "CreditBalance"),
        ("pedro_webhooks_no_overdraft", "CreditBalance"),
    ]


def test_reference_comparison_sees_foreign_key_actions(migrated_and_reference):
    reference, _ = migrated_and_reference
    actions = {row[0]: (row[3], row[4]) for row in reference["constraints"] if row[2] == "f"}
    # c = CASCADE, r = RESTRICT, n = SET NULL: the comparison above includes these.
    assert actions["CreditBalance_userId_fkey"] == ("c", "c")
    assert actions["UsageHistory_userId_fkey"] == ("r", "c")
    assert actions["SubscriptionEvent_userId_fkey"] == ("n", "c")


def test_public_holds_no_alembic_version_table(migrated_and_reference):
    _, migrated = migrated_and_reference
    assert "alembic_version" not in {name for name, _ in migrated["relations"]}


def test_service_schema_holds_alembic_version_and_inbox(settings, fresh_database):
    url = fresh_database()
    migrate.upgrade(settings_copy(settings, database_url=url))
    service = describe_schema(libpq_url(url), settings.service_schema)
    tables = {name for name, kind in service["relations"] if kind == "r"}
    assert {"alembic_version", "webhook_inbox"} <= tables
    constraints = {row[0] for row in service["constraints"]}
    assert "webhook_inbox_source_external_id_key" in constraints
    indexes = {row[0]: row[4] for row in service["indexes"]}
    assert "WHERE (status = 'pending'::text)" in indexes["webhook_inbox_pending_enqueued_at_idx"]


def test_upgrade_downgrade_upgrade_on_an_empty_database(settings, fresh_database):
    url = fresh_database()
    target = settings_copy(settings, database_url=url)
    migrate.upgrade(target)
    migrate.downgrade(target, "base")
    emptied = describe_schema(libpq_url(url))
    assert emptied["relations"] == [] and emptied["types"] == [] and emptied["functions"] == []
    service = describe_schema(libpq_url(url), settings.service_schema)
    # Only Alembic's own (now empty) version table is left behind in the service schema.
    assert [name for name, kind in service["relations"] if kind == "r"] == ["alembic_version"]
    migrate.upgrade(target)
    assert describe_schema(libpq_url(url))["relations"]
