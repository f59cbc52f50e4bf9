"""Credit holds, as a worker's batch of one applies them (worker/usage/holds.py): held credits
leave the balance at once; a capture books what the work cost and gives back the rest; a release
or an expiry gives it all back; a hold ends once, and every later request answers what happened."""

from __future__ import annotations

import time

from sqlalchemy import text

from models.app import UsageHistory
from tests.support.inbox import assert_ledger_matches_balances
from tests.support.usage import (
    balance,
    capture,
    count_rows,
    debit,
    hold,
    hold_state,
    ledger_deltas,
    make_user,
    release,
    stored_status,
    usage_credits,
)
from worker.usage import holds
from worker.usage.apply_many import apply_many


def test_a_capture_of_less_than_held_books_what_it_cost_and_gives_back_the_rest(session_factory):
    make_user(session_factory, credits=100)
    held = hold(session_factory, "llm-1", credits=50)
    assert (held["status"], held["credits"], held["remaining"]) == ("held", 50, 50)
    assert balance(session_factory) == 50  # the app, reading creditsRemaining, sees what is left
    captured = capture(session_factory, "llm-1", 37, details={"tokens": 3700})
    assert (captured["status"], captured["credits"], captured["released"]) == ("captured", 37, 13)
    assert captured["remaining"] == 63 and balance(session_factory) == 63
    assert usage_credits(session_factory) == [37]  # one UsageHistory row, what the work cost
    assert ledger_deltas(session_factory, "hold") == [-50] and ledger_deltas(session_factory, "release") == [13]
    assert hold_state(session_factory, "llm-1") == "captured"
    assert_ledger_matches_balances(session_factory)


def test_a_capture_of_all_it_holds_gives_nothing_back(session_factory):
    make_user(session_factory)
    hold(session_factory, "all-1", credits=30)
    assert capture(session_factory, "all-1", 30)["released"] == 0
    assert balance(session_factory) == 70 and usage_credits(session_factory) == [30]
    assert ledger_deltas(session_factory, "release") == []
    assert_ledger_matches_balances(session_factory)


def test_a_release_gives_it_all_back_and_writes_no_usage(session_factory):
    make_user(session_factory)
    hold(session_factory, "rel-1", credits=40)
    released = release(session_factory, "rel-1")
    assert (released["status"], released["released"], released["remaining"]) == ("released", 40, 100)
    assert count_rows(session_factory, UsageHistory) == 0 and balance(session_factory) == 100
    assert_ledger_matches_balances(session_factory)


def test_more_than_held_is_refused_and_changes_nothing(session_factory):
    make_user(session_factory)
    hold(session_factory, "over-1", credits=10)
    assert capture(session_factory, "over-1", 11) == {
        "status": "over_capture",
        "remaining": None,
        "usage_id": None,
        "held": 10,
    }
    assert hold_state(session_factory, "over-1") == "open" and balance(session_factory) == 90
    assert capture(session_factory, "over-1", 10)["status"] == "captured"  # the caller may then debit the rest


def test_a_hold_ends_once_and_every_later_request_answers_what_happened(session_factory):
    make_user(session_factory)
    hold(session_factory, "once-1", credits=20)
    first = capture(session_factory, "once-1", 5)
    assert capture(session_factory, "once-1", 5) == first  # sent again: the same answer
    assert capture(session_factory, "once-1", 9) == first  # a hold is captured once
    assert release(session_factory, "once-1") == first  # "captured": nothing given back twice
    hold(session_factory, "once-2", credits=20)
    released = release(session_factory, "once-2")
    assert capture(session_factory, "once-2", 1) == released and released["status"] == "released"
    assert balance(session_factory) == 95 and usage_credits(session_factory) == [5]
    assert_ledger_matches_balances(session_factory)


def test_endings_of_one_hold_in_one_batch_end_it_once(session_factory):
    """A batch reads each hold once, under its lock: the first ending in the batch wins, and the
    others of the same hold answer what it did (not the state the batch read)."""
    make_user(session_factory)
    hold(session_factory, "batch-1", credits=20)
    requests = [
        holds.CaptureRequest("batch-1", 7, {"tokens": 700}, "tests"),
        holds.ReleaseRequest("batch-1", "tests"),
        holds.CaptureRequest("batch-1", 3, None, "tests"),
    ]
    with session_factory.begin() as session:
        answers = apply_many(session, [(request, True) for request in requests], holds.lock_holds)
    captured = answers[0]
    assert captured is not None and (captured["status"], captured["credits"], captured["released"]) == (
        "captured",
        7,
        13,
    )
    assert answers[1] == captured and answers[2] == captured
    assert balance(session_factory) == 93 and usage_credits(session_factory) == [7]
    with session_factory() as session:
        row = session.execute(
            text("SELECT state, captured, usage_id, end_answer, ended_at FROM ingest.credit_holds")
        ).one()
        details = session.scalar(text('SELECT details FROM "UsageHistory"'))
    assert (row.state, row.captured, row.usage_id) == ("captured", 7, captured["usage_id"])
    assert row.end_answer == captured and row.ended_at is not None  # a re-sent capture reads this
    assert details == {"tokens": 700}
    assert_ledger_matches_balances(session_factory)


def test_an_expired_hold_gives_it_all_back_and_captures_nothing(session_factory):
    make_user(session_factory)
    hold(session_factory, "exp-1", credits=25, expires_in=0.2)
    hold(session_factory, "exp-2", credits=25, expires_in=0.2)
    hold(session_factory, "later", credits=10, expires_in=600)
    time.sleep(0.3)
    with session_factory.begin() as session:
        assert holds.expire_due(session) == ["exp-1", "exp-2"]
    expired = capture(session_factory, "exp-1", 5)
    assert (expired["status"], expired["released"]) == ("expired", 25)
    assert release(session_factory, "exp-2")["status"] == "expired"
    assert hold_state(session_factory, "later") == "open" and balance(session_factory) == 90
    assert count_rows(session_factory, UsageHistory) == 0
    with session_factory() as session:
        reasons = session.scalars(text("SELECT reference FROM ingest.credit_ledger WHERE kind = 'release'")).all()
    assert sorted(reasons) == ["hold exp-1 expired", "hold exp-2 expired"]


def test_a_capture_after_the_expiry_but_before_the_sweep_finds_it_expired(session_factory):
    """The expiry is PostgreSQL's clock, not the sweep's timing: a late capture expires the hold."""
    make_user(session_factory)
    hold(session_factory, "late-1", credits=25, expires_in=0.1)
    time.sleep(0.2)
    assert capture(session_factory, "late-1", 5)["status"] == "expired"
    assert hold_state(session_factory, "late-1") == "expired" and balance(session_factory) == 100


def test_a_hold_refused_or_past_its_deadline_holds_nothing(session_factory):
    make_user(session_factory, credits=10)
    refused = hold(session_factory, "big-1", credits=11)
    assert (refused["status"], refused["remaining"]) == ("insufficient_credits", 10)
    assert hold(session_factory, "late-1", credits=5, not_after=time.time() - 1)["status"] == "expired"
    assert balance(session_factory) == 10 and hold_state(session_factory, "big-1") is None
    assert stored_status(session_factory, "late-1") == "expired"
    assert ledger_deltas(session_factory, "hold") == []


def test_held_credits_cannot_be_spent(session_factory):
    make_user(session_factory)
    hold(session_factory, "busy-1", credits=95)
    assert debit(session_factory, "spend-1", cost=10)["status"] == "insufficient_credits"
    assert debit(session_factory, "spend-2", cost=5)["status"] == "applied"
    assert balance(session_factory) == 0


def test_a_hold_without_credits_holds_the_operations_cost(session_factory):
    make_user(session_factory)
    held = hold(session_factory, "cost-1", operation="AI_IMAGE_GENERATION")
    assert held["credits"] == 10 and balance(session_factory) == 90  # the seed's cost


def test_bad_arguments_are_errors_that_store_nothing(session_factory):
    make_user(session_factory)
    assert hold(session_factory, "bad-1", credits=0)["error"] == "invalid_credits"
    assert hold(session_factory, "bad-2", credits=5, expires_in=10**9)["error"] == "invalid_expires_in"
    assert hold(session_factory, "bad-3", operation="NOPE")["error"] == "unknown_operation"
    assert capture(session_factory, "nothing-held", 1)["status"] == "unknown_hold"
    assert capture(session_factory, "bad-4", -1)["error"] == "invalid_credits"
    assert balance(session_factory) == 100 and stored_status(session_factory, "bad-1") is None


def test_a_hold_is_ended_only_by_the_service_that_made_it(session_factory):
    make_user(session_factory)
    hold(session_factory, "mine-1", credits=20)
    assert capture(session_factory, "mine-1", 5, service="other")["status"] == "unknown_hold"
    assert release(session_factory, "mine-1", service="other")["status"] == "unknown_hold"
    assert hold_state(session_factory, "mine-1") == "open" and balance(session_factory) == 80
