"""Debit rules, run in this process on the real database (the task runs the same function)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from models.app import UsageHistory
from models.ledger import CreditLedgerEntry
from models.usage import UsageRequest
from tests.support.billing import CLERK_ID, PRO_CREDITS, add_pro_plan, add_user, asaas_event
from tests.support.inbox import assert_ledger_matches_balances, deliver
from tests.support.usage import (
    balance,
    count_rows,
    debit,
    ledger_deltas,
    make_user,
    stored_status,
    usage_credits,
)
from worker.usage import debits, requests


@pytest.fixture(autouse=True)
def invariant(session_factory):
    yield
    assert_ledger_matches_balances(session_factory)


def test_applied_debit_writes_balance_usage_history_and_ledger(session_factory):
    make_user(session_factory)
    result = debit(session_factory, "k1", operation="AI_IMAGE_GENERATION", details={"prompt": "cat"})
    assert result["status"] == "applied" and result["remaining"] == 90
    assert balance(session_factory) == 90
    assert usage_credits(session_factory) == [10]
    assert ledger_deltas(session_factory, "usage") == [-10]
    with session_factory() as session:
        row = session.get(UsageHistory, result["usage_id"])
        stored = session.get(UsageRequest, "k1")
    assert (row.operation_type.value, row.details) == ("AI_IMAGE_GENERATION", {"prompt": "cat"})
    assert (stored.status, stored.credits, stored.usage_id, stored.result) == ("applied", 10, row.id, result)


def test_the_same_key_again_answers_the_stored_result_as_duplicate(session_factory):
    make_user(session_factory)
    first = debit(session_factory, "k1", cost=3)
    again = debit(session_factory, "k1", cost=3)
    assert again == {**first, "status": "duplicate", "original_status": "applied"}
    assert balance(session_factory) == 97 and count_rows(session_factory, UsageHistory) == 1


@pytest.mark.parametrize("changed", [{"clerk_user_id": "user_b"}, {"operation": "SHORTS_SCRIPT"}, {"cost": 4}])
def test_the_same_key_with_other_arguments_is_a_conflict(session_factory, changed):
    make_user(session_factory)
    make_user(session_factory, "user_b")
    debit(session_factory, "k1", cost=3)
    assert debit(session_factory, "k1", **{"cost": 3, **changed})["status"] == "conflict"
    assert count_rows(session_factory, CreditLedgerEntry) == 3  # two signups, one usage


def test_insufficient_credits_is_recorded_and_takes_nothing(session_factory):
    make_user(session_factory, credits=5)
    result = debit(session_factory, "k1", cost=6)
    assert result == {"status": "insufficient_credits", "remaining": 5, "usage_id": None}
    assert stored_status(session_factory, "k1") == "insufficient_credits"
    assert usage_credits(session_factory) == [] and ledger_deltas(session_factory, "usage") == []
    assert debit(session_factory, "k1", cost=6)["original_status"] == "insufficient_credits"


def test_a_debit_against_a_balance_a_reversal_took_below_zero_takes_nothing(session_factory):
    """A chargeback after the credits were spent leaves the balance negative: no debit applies
    until it is topped up, whatever it costs."""
    add_user(session_factory)  # user.created: 100 signup credits
    add_pro_plan(session_factory)
    assert deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED")).status == "processed"  # +500
    with session_factory.begin() as session:  # the app spends credits directly, through Prisma
        session.execute(text('UPDATE "CreditBalance" SET "creditsRemaining" = 20'))
    assert deliver(session_factory, "asaas", asaas_event("PAYMENT_CHARGEBACK_REQUESTED")).status == "processed"
    assert balance(session_factory, CLERK_ID) == 20 - PRO_CREDITS
    for key, fields in (("k1", {"cost": 1}), ("k2", {})):  # explicit, and the configured cost
        result = debit(session_factory, key, clerk_user_id=CLERK_ID, **fields)
        assert result == {"status": "insufficient_credits", "remaining": 20 - PRO_CREDITS, "usage_id": None}
        assert stored_status(session_factory, key) == "insufficient_credits"
    assert balance(session_factory, CLERK_ID) == 20 - PRO_CREDITS
    assert usage_credits(session_factory) == [] and ledger_deltas(session_factory, "usage") == []


def test_a_debit_can_take_the_last_credit(session_factory):
    make_user(session_factory, credits=5)
    assert debit(session_factory, "k1", cost=5)["remaining"] == 0


def test_an_inactive_user_cannot_spend(session_factory):
    make_user(session_factory, active=False)
    result = debit(session_factory, "k1", cost=1)
    assert (result["status"], result["reason"], result["remaining"]) == ("insufficient_credits", "inactive_user", 100)
    assert balance(session_factory) == 100 and usage_credits(session_factory) == []


def test_unknown_user_waits_then_is_final(session_factory):
    with pytest.raises(requests.NotYetKnown):
        debit_not_final(session_factory)
    assert stored_status(session_factory, "k1") is None  # rolled back: free for the retry
    assert debit(session_factory, "k1", clerk_user_id="user_ghost")["status"] == "unknown_user"
    assert stored_status(session_factory, "k1") == "unknown_user"


def debit_not_final(factory):
    with factory.begin() as session:
        debits.debit(session, debits.DebitRequest("user_ghost", "AI_TEXT_CHAT", "k1"), final=False)


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"operation": "AI_TELEPATHY"}, "unknown_operation"),
        ({"cost": -1}, "invalid_cost"),
        ({"cost": True}, "invalid_cost"),
        ({"operation": "SHORTS_MEDIA"}, "unknown_cost"),
    ],
)
def test_mistakes_answer_an_error_and_store_nothing(session_factory, fields, code):
    make_user(session_factory)
    result = debit(session_factory, "k1", **fields)
    assert (result["status"], result["error"]) == ("error", code)
    assert stored_status(session_factory, "k1") is None
    assert balance(session_factory) == 100


def test_outcome_reports_the_stored_answer_or_unknown(session_factory):
    make_user(session_factory)
    applied = debit(session_factory, "k1", cost=2)
    with session_factory() as session:
        assert requests.outcome(session, "k1", "tests") == {**applied, "kind": "debit"}
        assert requests.outcome(session, "never-sent", "tests")["status"] == "unknown"
        # A service learns nothing of another's keys.
        assert requests.outcome(session, "k1", "other")["status"] == "unknown"
