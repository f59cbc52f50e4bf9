"""The debit path's statements: few round trips, the same rows, in any configured service schema."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select, text

from models import migrate
from models.app import CreditBalance, User
from models.db import make_engine, make_session_factory
from models.ledger import LedgerKind
from models.settings import load_settings
from tests.support.databases import create_database, drop_database
from tests.support.inbox import assert_ledger_matches_balances, ledger_sum
from tests.support.usage import balance, debit, make_user, refund, set_feature_costs
from worker.credits.ledger import change_credits, open_credit_balance
from worker.errors import LedgerKeyConflict


def test_an_applied_debit_is_two_statements(session_factory, engine):
    make_user(session_factory)
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 2})
    debit(session_factory, "warm")  # fills the cost cache
    statements = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        result = debit(session_factory, "k1")
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert (result["status"], result["remaining"]) == ("applied", 96)
    # claim + account + current plan; balance + ledger entry + UsageHistory + stored answer.
    assert len(statements) == 2, statements
    assert_ledger_matches_balances(session_factory)


def _open_balance(session, clerk_id: str) -> tuple[User, CreditBalance]:
    """A user and the `CreditBalance` object this session holds for it, opened with 100 credits."""
    user = User(clerk_id=clerk_id)
    session.add(user)
    session.flush()
    change = open_credit_balance(session, user, 100, reference="test")
    return user, session.get(CreditBalance, change.credit_balance_id)


def test_a_reused_ledger_key_raises_and_the_rollback_undoes_the_balance_move(session_factory):
    with session_factory.begin() as session:
        user, opened = _open_balance(session, "user_k")
        balance_id = opened.id
        change_credits(session, balance_id, delta=-10, kind=LedgerKind.USAGE, idempotency_key="k", reference="x")
    with pytest.raises(LedgerKeyConflict), session_factory.begin() as session:
        change_credits(session, balance_id, delta=-10, kind=LedgerKind.USAGE, idempotency_key="k", reference="x")
    with session_factory() as session:
        assert session.scalar(select(CreditBalance.credits_remaining)) == 90
        assert ledger_sum(session, user.id) == 90
    assert_ledger_matches_balances(session_factory)


def test_a_balance_the_session_holds_shows_the_change(session_factory):
    with session_factory.begin() as session:
        _, held = _open_balance(session, "user_s")
        assert held.credits_remaining == 100
        after = change_credits(
            session, held.id, delta=-7, kind=LedgerKind.USAGE, idempotency_key="u", reference="x", floor=0
        )
        assert held.credits_remaining == after.balance_after == 93
        assert (
            change_credits(
                session, held.id, delta=-94, kind=LedgerKind.USAGE, idempotency_key="v", reference="x", floor=0
            )
            is None
        )
        assert held.credits_remaining == 93
        assert held not in session.dirty


def test_debits_and_refunds_write_the_configured_service_schema(admin_url, redis_urls, monkeypatch):
    # Its whole environment: it must not rely on another test having loaded the run's settings.
    database_url = create_database(admin_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_urls["scratch"])
    monkeypatch.setenv("SERVICE_SCHEMA", "pedro_ledger")
    engine = None
    try:
        settings = load_settings()
        migrate.upgrade(settings)
        engine = make_engine(settings)
        factory = make_session_factory(engine)
        make_user(factory, credits=50)
        assert debit(factory, "d1", cost=5)["remaining"] == 45
        assert debit(factory, "d2", cost=50)["status"] == "insufficient_credits"
        assert refund(factory, "r1", "d1")["remaining"] == 50
        assert balance(factory) == 50
        with factory() as session:
            ledger = session.scalars(text("SELECT delta FROM pedro_ledger.credit_ledger ORDER BY id")).all()
            requests = session.scalars(text("SELECT status FROM pedro_ledger.usage_requests ORDER BY 1")).all()
            assert session.scalar(text("SELECT to_regclass('ingest.usage_requests')")) is None
        assert ledger == [50, -5, 5]
        assert requests == ["applied", "applied", "insufficient_credits"]
    finally:
        if engine is not None:
            engine.dispose()
        drop_database(admin_url, database_url)
