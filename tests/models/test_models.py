"""The ORM models write what Prisma reads, and the database keeps Prisma's relations."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from models.app import CreditBalance, OperationType, StorageObject, UsageHistory, User
from models.base import SERVICE_SCHEMA, constant, utcnow
from models.db import make_engine
from models.inbox import DeliveryRecorder, WebhookInbox
from models.ledger import MAY_GO_NEGATIVE_SETTING, OVERDRAFT_GUARD
from models.tables import metadata


def _user(clerk_id: str = "user_1", email: str | None = "a@example.org") -> User:
    user = User(clerk_id=clerk_id, email=email, name="Ana")
    user.credit_balance = CreditBalance(clerk_user_id=clerk_id, credits_remaining=42)
    return user


def test_user_with_balance_reads_back_with_prisma_names(session):
    user = _user()
    session.add(user)
    session.commit()
    row = session.execute(
        text(
            'SELECT u."id", u."clerkId", u."email", u."isActive", u."createdAt", u."updatedAt", '
            'b."creditsRemaining", b."clerkUserId", b."userId" '
            'FROM "User" u JOIN "CreditBalance" b ON b."userId" = u."id" WHERE u."clerkId" = :c'
        ),
        {"c": "user_1"},
    ).one()
    assert row.id == user.id and len(row.id) == 25 and row.id.startswith("c")
    assert (row.clerkId, row.email, row.isActive) == ("user_1", "a@example.org", True)
    assert (row.creditsRemaining, row.clerkUserId, row.userId) == (42, "user_1", user.id)
    # Naive UTC, millisecond precision, as Prisma writes TIMESTAMP(3).
    assert row.createdAt.tzinfo is None and abs(row.createdAt - utcnow()) < timedelta(minutes=1)
    assert row.createdAt.microsecond % 1000 == 0


def test_updated_at_is_set_on_every_update(session):
    user = _user()
    session.add(user)
    session.commit()
    # As if the row was last written long ago: the next update must move it to now (Prisma's
    # @updatedAt has no database default or trigger; the writer sets it).
    long_ago = datetime(2000, 1, 1)
    session.execute(text('UPDATE "User" SET "updatedAt" = :t'), {"t": long_ago})
    session.commit()
    session.refresh(user)
    first = user.updated_at
    assert first == long_ago
    user.name = "Bia"
    session.commit()
    assert user.updated_at > first
    assert abs(user.updated_at - utcnow()) < timedelta(minutes=1)
    stored = session.execute(text('SELECT "updatedAt" FROM "User"')).scalar_one()
    assert stored == user.updated_at


def test_deleting_a_user_cascades_to_balance_and_storage(session):
    user = _user()
    session.add(user)
    session.flush()
    session.add(
        StorageObject(user_id=user.id, clerk_user_id="user_1", url="https://b/x", pathname="x", name="x.png", size=10)
    )
    session.commit()
    session.execute(delete(User).where(User.id == user.id))
    session.commit()
    counts = session.execute(
        text('SELECT (SELECT count(*) FROM "CreditBalance"), (SELECT count(*) FROM "StorageObject")')
    ).one()
    assert tuple(counts) == (0, 0)


def test_deleting_a_user_with_usage_history_is_refused(session):
    user = _user()
    session.add(user)
    session.flush()
    session.add(
        UsageHistory(
            user_id=user.id,
            credit_balance_id=user.credit_balance.id,
            operation_type=OperationType.AI_TEXT_CHAT,
            credits_used=1,
        )
    )
    session.commit()
    with pytest.raises(IntegrityError, match="UsageHistory_userId_fkey"):
        session.execute(delete(User).where(User.id == user.id))
        session.flush()
    session.rollback()
    assert session.execute(text('SELECT "operationType"::text FROM "UsageHistory"')).scalar_one() == "AI_TEXT_CHAT"


def test_models_match_the_migrated_database(engine, settings):
    """The models declare exactly what the migrations built (no drift either way)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn.execution_options(schema_translate_map={SERVICE_SCHEMA: settings.service_schema}),
            opts={
                "include_schemas": True,
                "include_name": lambda name, type_, parent: (
                    type_ != "schema" or name in (None, "public", settings.service_schema)
                ),
                "include_object": lambda obj, name, type_, reflected, compare_to: name != "alembic_version",
            },
        )
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_the_overdraft_guard_is_the_one_the_models_name(engine, settings):
    """models.ledger names the trigger of migration 0007, its error prefix and the setting that
    lets a reversal through: the database holds exactly those."""
    with engine.connect() as conn:
        trigger = conn.execute(
            text(
                "SELECT tg.tgname, p.proname, n.nspname, p.prosrc FROM pg_trigger tg "
                "JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE tg.tgrelid = '\"CreditBalance\"'::regclass AND tg.tgname = :name"
            ),
            {"name": OVERDRAFT_GUARD},
        ).one()
    assert (trigger.tgname, trigger.nspname) == (OVERDRAFT_GUARD, settings.service_schema)
    assert f"current_setting('{MAY_GO_NEGATIVE_SETTING}', true) = 'on'" in trigger.prosrc
    assert f"RAISE EXCEPTION '{OVERDRAFT_GUARD}: " in trigger.prosrc
    assert "ERRCODE = 'check_violation'" in trigger.prosrc


def test_the_receivers_recorder_stores_a_delivery_once(settings, session):
    engine = make_engine(settings, pre_ping=False, isolation_level="AUTOCOMMIT")
    try:
        recorder = DeliveryRecorder(engine)
        payload = {"type": "user.created", "data": {"id": "user_1", "nested": [1, "two", None, 1.5e3, "\u00e9"]}}
        text = json.dumps(payload)
        first = recorder.record(source="clerk", external_id="msg_1", event_type="user.created", payload_json=text)
        again = recorder.record(source="clerk", external_id="msg_1", event_type="user.created", payload_json=text)
        other = recorder.record(source="asaas", external_id="msg_1", event_type="PAYMENT_CONFIRMED", payload_json="{}")
    finally:
        engine.dispose()
    assert isinstance(first, int) and again is None and isinstance(other, int) and other != first
    # Committed when `record` returned: another session sees it.
    row = session.execute(select(WebhookInbox).where(WebhookInbox.id == first)).scalar_one()
    assert (row.source, row.external_id, row.event_type, row.payload, row.status) == (
        "clerk",
        "msg_1",
        "user.created",
        payload,
        "pending",
    )


def test_the_receivers_recorder_raises_sqlalchemy_errors(settings):
    engine = make_engine(settings, pre_ping=False, isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(DBAPIError) as raised:
            # A source the table's check constraint refuses.
            DeliveryRecorder(engine).record(source="nope", external_id="secret-id", event_type="x", payload_json="{}")
    finally:
        engine.dispose()
    assert isinstance(raised.value, IntegrityError)  # as SQLAlchemy's Connection would raise it
    assert raised.value.connection_invalidated is False
    assert raised.value.hide_parameters is True


@pytest.mark.parametrize("value", ["it's", "{a,b}", "", 0, 42, None])
def test_a_constant_written_into_the_sql_reads_back_as_itself(session, value):
    assert session.scalar(select(constant(value))) == value


@pytest.mark.parametrize("value", [True, 1.5, b"x", ["a"]])
def test_only_text_integers_and_null_are_constants(value):
    with pytest.raises(TypeError):
        constant(value)


def test_the_replay_statement_binds_only_its_inputs():
    """Its fixed values (statuses, provider names, JSON paths) are written into the SQL: only
    the row, its outcome and the user are converted and sent on each run."""
    from sqlalchemy.dialects import postgresql

    from worker.inbox.processing import _FINISH_AND_REPLAY

    inputs = {"inbox_id": 1, "final_status": "processed", "final_detail": None, "clerk_user_id": "user_1"}
    compiled = _FINISH_AND_REPLAY.compile(dialect=postgresql.psycopg.dialect(), column_keys=sorted(inputs))
    assert sorted(compiled.construct_params(inputs)) == sorted(inputs)


@pytest.mark.usefixtures("session_factory")  # the rows it stores are emptied after the test
def test_the_receivers_recorder_holds_one_connection_until_closed(settings):
    engine = make_engine(settings, pre_ping=False, isolation_level="AUTOCOMMIT")
    recorder = DeliveryRecorder(engine)
    try:
        for number in range(3):
            recorder.record(source="clerk", external_id=f"held_{number}", event_type="t", payload_json="{}")
        # One connection for every delivery: no checkout and return per delivery.
        assert (engine.pool.checkedout(), engine.pool.checkedin()) == (1, 0)
        # A statement the database refuses leaves the connection usable: it is kept.
        with pytest.raises(IntegrityError):
            recorder.record(source="nope", external_id="held_x", event_type="t", payload_json="{}")
        assert recorder.record(source="clerk", external_id="held_3", event_type="t", payload_json="{}") is not None
        assert (engine.pool.checkedout(), engine.pool.checkedin()) == (1, 0)
        recorder.close()
        assert (engine.pool.checkedout(), engine.pool.checkedin()) == (0, 1)
    finally:
        recorder.close()
        engine.dispose()
