"""Refunds: full, partial, never more than was debited, idempotent on their own key."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
import pytest

from models.db import make_engine, make_session_factory
from tests.support.databases import libpq_url, settings_copy
from tests.support.inbox import assert_ledger_matches_balances
from tests.support.usage import balance, debit, ledger_deltas, make_user, refund, usage_credits
from worker.usage import refunds, requests


@pytest.fixture(autouse=True)
def debited(session_factory):
    make_user(session_factory)
    assert debit(session_factory, "d1", operation="AI_IMAGE_GENERATION", cost=10)["remaining"] == 90
    yield
    assert_ledger_matches_balances(session_factory)


def test_full_refund_gives_everything_back_as_a_negative_usage_row(session_factory):
    result = refund(session_factory, "r1", "d1", details={"why": "generation failed"})
    assert (result["status"], result["remaining"]) == ("applied", 100)
    assert usage_credits(session_factory) == [10, -10]
    assert ledger_deltas(session_factory, "refund") == [10]


def test_partial_refunds_add_up_to_the_debit_and_no_further(session_factory):
    assert refund(session_factory, "r1", "d1", credits=4)["remaining"] == 94
    assert refund(session_factory, "r2", "d1", credits=6)["remaining"] == 100
    over = refund(session_factory, "r3", "d1", credits=1)
    assert (over["status"], over["refundable"]) == ("over_refund", 0)
    assert balance(session_factory) == 100 and usage_credits(session_factory) == [10, -4, -6]


def test_an_over_refund_is_refused_and_recorded(session_factory):
    over = refund(session_factory, "r1", "d1", credits=11)
    assert (over["status"], over["refundable"]) == ("over_refund", 10)
    assert refund(session_factory, "r1", "d1", credits=11)["original_status"] == "over_refund"
    assert balance(session_factory) == 90


def test_a_duplicate_refund_has_one_effect_and_a_changed_one_conflicts(session_factory):
    first = refund(session_factory, "r1", "d1", credits=3)
    assert refund(session_factory, "r1", "d1", credits=3) == {
        **first,
        "status": "duplicate",
        "original_status": "applied",
    }
    assert refund(session_factory, "r1", "d1", credits=4)["status"] == "conflict"
    assert refund(session_factory, "d1", "d1")["status"] == "conflict"  # a debit's key is not a refund's
    assert balance(session_factory) == 93


def test_a_debit_that_did_not_apply_has_nothing_to_refund(session_factory):
    assert debit(session_factory, "d2", cost=1000)["status"] == "insufficient_credits"
    assert refund(session_factory, "r1", "d2")["status"] == "over_refund"


def test_a_refund_of_an_unknown_or_foreign_debit(session_factory):
    make_user(session_factory, "user_b")
    with pytest.raises(requests.NotYetKnown), session_factory.begin() as session:
        refunds.refund(session, refunds.RefundRequest("user_a", "r1", "not-yet"), final=False)
    assert refund(session_factory, "r1", "not-yet")["status"] == "unknown_debit"
    assert refund(session_factory, "r2", "d1", clerk_user_id="user_b")["status"] == "unknown_debit"
    assert balance(session_factory) == 90


@pytest.fixture
def patient_factory(settings):
    """Sessions whose lock waits last 30 s (the run's DB_LOCK_TIMEOUT_MS is 1 s)."""
    engine = make_engine(settings_copy(settings, db_lock_timeout_ms=30_000))
    yield make_session_factory(engine)
    engine.dispose()


def test_two_refunds_of_one_debit_at_once_never_give_back_more_than_it_took(session_factory, patient_factory, settings):
    """Two refunds of d1 (10 credits) under different keys, 7 credits each, in two threads: the
    second starts while the first is mid-transaction. Together they give back at most 10."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        with patient_factory() as first, first.begin():
            applied = refunds.refund(first, refunds.RefundRequest("user_a", "r1", "d1", credits=7, service="tests"))
            assert applied["status"] == "applied"
            second = pool.submit(refund, patient_factory, "r2", "d1", credits=7)
            _wait_until_blocked_or_done(settings, second)
        # The first committed: the second goes on.
        answer = second.result(timeout=30)
    assert answer["status"] == "over_refund", answer
    assert answer["refundable"] == 3
    assert balance(session_factory) == 97
    assert usage_credits(session_factory) == [10, -7]
    assert ledger_deltas(session_factory, "refund") == [7]


def _wait_until_blocked_or_done(settings, future: Future, timeout: float = 30) -> None:
    """Until the other thread's transaction waits for a lock (or has finished)."""
    url = libpq_url(settings.database_url.get_secret_value())
    # A connection of its own, in autocommit: pg_stat_activity is a snapshot per transaction.
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while not future.done():
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()[0]
            if waiting:
                return
            assert time.monotonic() < deadline, "the second refund neither waited nor finished"
            time.sleep(0.02)


def test_invalid_credits_are_an_error(session_factory):
    result = refund(session_factory, "r1", "d1", credits=0)
    assert (result["status"], result["error"]) == ("error", "invalid_credits")
