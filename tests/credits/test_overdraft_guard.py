"""The overdraft guard (migration 0007): no writer takes a balance below zero, except the
service's marked reversals (a grant's refund or chargeback, `credits adjust --allow-negative`)."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from models import migrate
from models.app import CreditBalance
from models.ledger import MAY_GO_NEGATIVE_SETTING, OVERDRAFT_GUARD, OVERDRAFT_SQLSTATE, LedgerKind
from tests.support.billing import CLERK_ID, PRO_CREDITS, add_pro_plan, add_user, asaas_event, balance, ledger
from tests.support.catalog import describe_schema
from tests.support.databases import create_database, drop_database, libpq_url, settings_copy
from tests.support.inbox import assert_ledger_matches_balances, deliver
from tests.support.usage import debit, make_user
from worker.credits.ledger import change_credits

USER = "user_guard"
APP_DEBIT = 'UPDATE "CreditBalance" SET "creditsRemaining" = "creditsRemaining" - :cost WHERE "clerkUserId" = :user'


def _balance_and_entries(session_factory, clerk_id: str = USER) -> tuple[int | None, int]:
    with session_factory() as session:
        remaining = session.scalar(
            select(CreditBalance.credits_remaining).where(CreditBalance.clerk_user_id == clerk_id)
        )
        entries = session.scalar(text("SELECT count(*) FROM ingest.credit_ledger"))
    return remaining, entries


def _app_debit(session_factory, cost: int, clerk_id: str = USER) -> None:
    """What Prisma's `creditBalance.update({data: {creditsRemaining: {decrement}}})` sends."""
    with session_factory.begin() as session:
        session.execute(text(APP_DEBIT), {"cost": cost, "user": clerk_id})


def test_an_update_that_would_overdraw_is_refused_with_the_guards_error_and_changes_nothing(session_factory):
    make_user(session_factory, USER, credits=5)
    before = _balance_and_entries(session_factory)
    with pytest.raises(IntegrityError) as refused:
        _app_debit(session_factory, 6)
    error = refused.value.orig
    assert isinstance(error, psycopg.errors.CheckViolation)
    assert error.sqlstate == OVERDRAFT_SQLSTATE == "23514"
    message = error.diag.message_primary or ""
    assert message.startswith(f'{OVERDRAFT_GUARD}: refused to take "CreditBalance" ')
    assert message.endswith(" from 5 to -1 credits (below zero)")
    assert _balance_and_entries(session_factory) == before == (5, 1)


def test_app_style_increments_and_decrements_that_stay_at_or_above_zero_pass(session_factory):
    make_user(session_factory, USER, credits=5)
    _app_debit(session_factory, 5)  # down to exactly zero
    _app_debit(session_factory, -3)  # an increment
    _app_debit(session_factory, 1)
    assert balance(session_factory, USER) == 2
    assert_ledger_matches_balances(session_factory)  # each recorded as an `external` entry


def test_a_negative_balance_may_go_up_but_not_further_down(session_factory):
    make_user(session_factory, USER, credits=5)
    with session_factory.begin() as session:
        reversal = _reversal(session, -15)
    assert reversal.balance_after == -10
    _app_debit(session_factory, -4)  # credits bought back: -6
    with pytest.raises(IntegrityError, match=f"{OVERDRAFT_GUARD}: .* from -6 to -7 credits"):
        _app_debit(session_factory, 1)
    assert balance(session_factory, USER) == -6
    assert_ledger_matches_balances(session_factory)


def _reversal(session, delta: int, key: str = "reversal:test:pay_1:15"):
    balance_id = session.scalar(select(CreditBalance.id).where(CreditBalance.clerk_user_id == USER))
    return change_credits(
        session,
        balance_id,
        delta=delta,
        kind=LedgerKind.REVERSAL,
        idempotency_key=key,
        reference="refund/chargeback of a test payment",
        may_go_negative=True,
    )


def test_the_services_debit_never_meets_the_guard(session_factory):
    """A debit has a floor of 0: one that does not fit is answered, never refused by the database."""
    make_user(session_factory, USER, credits=3)
    assert debit(session_factory, "k1", USER, cost=3)["status"] == "applied"
    refused = debit(session_factory, "k2", USER, cost=1)
    assert (refused["status"], refused["remaining"]) == ("insufficient_credits", 0)
    assert balance(session_factory, USER) == 0
    assert_ledger_matches_balances(session_factory)


def test_a_change_without_the_mark_is_refused_below_zero(session_factory):
    make_user(session_factory, USER, credits=5)
    with session_factory() as session:
        balance_id = session.scalar(select(CreditBalance.id))
        with pytest.raises(IntegrityError, match=OVERDRAFT_GUARD):
            change_credits(
                session, balance_id, delta=-6, kind=LedgerKind.ADJUSTMENT, idempotency_key="a1", reference="x"
            )
        session.rollback()
    assert _balance_and_entries(session_factory) == (5, 1)


def test_the_mark_lasts_one_transaction_only(session_factory):
    make_user(session_factory, USER, credits=5)
    with session_factory() as session:
        _reversal(session, -6)
        assert session.scalar(text(f"SELECT current_setting('{MAY_GO_NEGATIVE_SETTING}')")) == "on"
        session.commit()
        # The same connection, the next transaction: the app's kind of overdraft is refused again.
        with pytest.raises(IntegrityError, match=OVERDRAFT_GUARD):
            session.execute(text(APP_DEBIT), {"cost": 1, "user": USER})
        session.rollback()
    assert balance(session_factory, USER) == -1


def test_a_floor_and_may_go_negative_together_are_a_mistake(session):
    with pytest.raises(ValueError, match="may_go_negative with a floor"):
        change_credits(
            session,
            "no-balance",
            delta=-1,
            kind=LedgerKind.ADJUSTMENT,
            idempotency_key="x",
            reference="x",
            floor=0,
            may_go_negative=True,
        )


def test_a_chargeback_may_still_take_the_balance_below_zero(session_factory):
    add_pro_plan(session_factory)
    add_user(session_factory)
    assert deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED")).status == "processed"
    _app_debit(session_factory, 100 + PRO_CREDITS - 20, CLERK_ID)  # the app spent all but 20
    row = deliver(session_factory, "asaas", asaas_event("PAYMENT_CHARGEBACK_REQUESTED"))
    assert row.status == "processed", (row.status, row.last_error)
    assert balance(session_factory) == 20 - PRO_CREDITS
    assert ledger(session_factory)[-1][:2] == ("reversal", -PRO_CREDITS)
    assert_ledger_matches_balances(session_factory)


def test_the_downgrade_removes_exactly_the_guard(admin_url, settings):
    """0007 down leaves the database as 0006 built it; up again brings the guard back."""
    guarded_url, plain_url = create_database(admin_url), create_database(admin_url)
    try:
        guarded, plain = (
            settings_copy(settings, database_url=guarded_url),
            settings_copy(settings, database_url=plain_url),
        )
        migrate.upgrade(guarded, "0007")
        migrate.upgrade(plain, "0006")
        with_guard = _public_and_service(guarded_url, settings.service_schema)
        migrate.downgrade(guarded, "0006")
        assert _public_and_service(guarded_url, settings.service_schema) == _public_and_service(
            plain_url, settings.service_schema
        )
        migrate.upgrade(guarded, "0007")
        assert _public_and_service(guarded_url, settings.service_schema) == with_guard
        assert ("credit_balance_refuse_overdraft",) in with_guard[1]["functions"]
        assert (OVERDRAFT_GUARD, "CreditBalance") in with_guard[0]["triggers"]
    finally:
        drop_database(admin_url, guarded_url)
        drop_database(admin_url, plain_url)


def _public_and_service(url: str, service_schema: str) -> tuple[dict, dict]:
    return describe_schema(libpq_url(url)), describe_schema(libpq_url(url), service_schema)
