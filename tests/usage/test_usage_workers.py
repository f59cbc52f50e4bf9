"""Debits through the broker to real worker processes: concurrency, duplicates, late users."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from pedro_credits import CreditsClient

from models.app import UsageHistory
from tests.support.celery_worker import WorkerProcess, wait_for_state
from tests.support.inbox import assert_ledger_matches_balances, deliver, payload
from tests.support.usage import balance, count_rows, ledger_deltas, make_user

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"  # the id in the documented user.created payload


@pytest.fixture(scope="module")
def workers(celery_worker, producer):
    """Two `celery worker` instances (two prefork processes each) on the `usage` queue."""
    second = WorkerProcess(producer, queues="usage", concurrency=2)
    second.start()
    yield [celery_worker, second]
    second.stop()


@pytest.fixture
def client(workers, producer, session_factory):
    yield CreditsClient(producer.conf.broker_url)
    assert_ledger_matches_balances(session_factory)


def answers(results) -> list[dict]:
    return [result.get(timeout=60) for result in results]


def test_300_concurrent_debits_of_1_against_100_apply_exactly_100(client, session_factory):
    make_user(session_factory, credits=100)
    sent = [client.debit("user_a", "AI_TEXT_CHAT", f"burst-{n}", cost=1) for n in range(300)]
    results = answers(sent)
    statuses = Counter(result["status"] for result in results)
    print(f"\n300 concurrent debits of 1 against 100: {dict(statuses)}, balance {balance(session_factory)}")
    assert statuses == {"applied": 100, "insufficient_credits": 200}
    # Each applied debit left a different balance: they ran one after another on the row.
    assert sorted(r["remaining"] for r in results if r["status"] == "applied") == list(range(100))
    assert balance(session_factory) == 0
    assert count_rows(session_factory, UsageHistory) == 100
    assert sum(ledger_deltas(session_factory, "usage")) == -100


def test_every_debit_sent_twice_at_once_has_one_effect(client, session_factory):
    make_user(session_factory)
    sent = [client.debit("user_a", "AI_TEXT_CHAT", f"twice-{n // 2}", cost=2) for n in range(40)]
    statuses = Counter(result["status"] for result in answers(sent))
    assert statuses == {"applied": 20, "duplicate": 20}
    assert balance(session_factory) == 60 and count_rows(session_factory, UsageHistory) == 20
    reuse = client.debit("user_a", "AI_TEXT_CHAT", "twice-0", cost=3).get(timeout=30)
    assert reuse["status"] == "conflict"


def test_a_debit_before_the_user_exists_applies_once_after_user_created(client, session_factory):
    early = client.debit(CLERK_ID, "AI_TEXT_CHAT", "early-1", cost=1, wait_for_user=60)
    wait_for_state(early, "RETRY")  # the worker ran it, found no user, and is waiting
    deliver(session_factory, "clerk", payload("clerk/user.created"))
    assert early.get(timeout=60)["status"] == "applied"
    again = client.debit(CLERK_ID, "AI_TEXT_CHAT", "early-1", cost=1).get(timeout=30)
    assert (again["status"], again["remaining"]) == ("duplicate", 99)
    assert balance(session_factory, CLERK_ID) == 99 and ledger_deltas(session_factory, "usage") == [-1]


def test_a_user_that_never_comes_is_unknown_user_after_the_wait(client):
    result = client.debit("user_ghost", "AI_TEXT_CHAT", "ghost-1", wait_for_user=1).get(timeout=30)
    assert result == {"status": "unknown_user", "remaining": None, "usage_id": None}
    assert client.outcome("ghost-1").get(timeout=30)["status"] == "unknown_user"


def test_a_client_built_from_the_redis_url_as_the_readme_shows(workers, session_factory):
    """`CreditsClient(os.environ["REDIS_URL"])`: a service that knows only the Redis URL."""
    make_user(session_factory)
    usage = CreditsClient(os.environ["REDIS_URL"])
    try:
        answer = usage.debit("user_a", "AI_IMAGE_GENERATION", idempotency_key="gen:1").get(timeout=30)
        assert answer["status"] == "applied" and answer["remaining"] == 90  # the seed's cost: 10
        assert usage.outcome("gen:1").get(timeout=30) == {**answer, "kind": "debit"}
    finally:
        usage.close()
    assert balance(session_factory) == 90 and count_rows(session_factory, UsageHistory) == 1
    assert_ledger_matches_balances(session_factory)


def test_refund_and_outcome_through_the_worker(client, session_factory):
    make_user(session_factory)
    assert client.debit("user_a", "AI_IMAGE_GENERATION", "img-1", cost=10).get(timeout=30)["remaining"] == 90
    refunds = [client.refund("user_a", "img-1-refund", refund_of="img-1") for _ in range(2)]
    assert sorted(r["status"] for r in answers(refunds)) == ["applied", "duplicate"]
    assert client.outcome("img-1-refund").get(timeout=30)["remaining"] == 100
    assert balance(session_factory) == 100
