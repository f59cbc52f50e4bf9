"""Debits through the broker to real worker processes: concurrency, duplicates, late users."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from pedro_credits import CreditsClient

from models.app import UsageHistory
from tests.conftest import USAGE_TEST_KEYS
from tests.support.celery_worker import WorkerProcess
from tests.support.inbox import assert_ledger_matches_balances, deliver, payload
from tests.support.usage import answers, balance, count_rows, credits_client, ledger_deltas, make_user, wait_for_retry

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
    client = credits_client(producer.conf.broker_url)
    yield client
    client.close()
    assert_ledger_matches_balances(session_factory)


def test_300_concurrent_debits_of_1_against_100_apply_exactly_100(client, session_factory):
    make_user(session_factory, credits=100)
    sent = [client.send_debit("user_a", "AI_TEXT_CHAT", f"burst-{n}", cost=1, wait=60) for n in range(300)]
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
    sent = [client.send_debit("user_a", "AI_TEXT_CHAT", f"twice-{n // 2}", cost=2) for n in range(40)]
    statuses = Counter(result["status"] for result in answers(sent))
    assert statuses == {"applied": 20, "duplicate": 20}
    assert balance(session_factory) == 60 and count_rows(session_factory, UsageHistory) == 20
    reuse = client.debit("user_a", "AI_TEXT_CHAT", "twice-0", cost=3)
    assert reuse["status"] == "conflict"


def test_a_debit_before_the_user_exists_applies_once_after_user_created(client, producer, session_factory):
    early = client.send_debit(CLERK_ID, "AI_TEXT_CHAT", "early-1", cost=1, wait=60, wait_for_user=60)
    wait_for_retry(producer, early)  # the worker ran it, found no user, and is waiting
    deliver(session_factory, "clerk", payload("clerk/user.created"))
    assert early.answer()["status"] == "applied"
    again = client.debit(CLERK_ID, "AI_TEXT_CHAT", "early-1", cost=1)
    assert (again["status"], again["remaining"]) == ("duplicate", 99)
    assert balance(session_factory, CLERK_ID) == 99 and ledger_deltas(session_factory, "usage") == [-1]


def test_a_user_that_never_comes_is_unknown_user_after_the_wait(client):
    result = client.debit("user_ghost", "AI_TEXT_CHAT", "ghost-1", wait_for_user=1)
    assert result == {"status": "unknown_user", "remaining": None, "usage_id": None}
    assert client.outcome("ghost-1")["status"] == "unknown_user"


def test_a_client_built_from_the_environment_as_the_docs_show(workers, session_factory, monkeypatch):
    """`CreditsClient.from_environment()`: a service that knows the Redis URL, its name and key."""
    make_user(session_factory)
    monkeypatch.setenv("CREDITS_SERVICE", "tests")
    monkeypatch.delenv("CREDITS_SERVICE_KEY", raising=False)
    with pytest.raises(ValueError, match="CREDITS_SERVICE_KEY not set"):
        CreditsClient.from_environment()
    # During a rotation: the first key signs, every one verifies the answers.
    monkeypatch.setenv("CREDITS_SERVICE_KEY", f"{USAGE_TEST_KEYS['tests']},an-older-key")
    assert os.environ["REDIS_URL"]
    usage = CreditsClient.from_environment()
    try:
        answer = usage.debit("user_a", "AI_IMAGE_GENERATION", idempotency_key="gen:1")
        assert answer["status"] == "applied" and answer["remaining"] == 90  # the seed's cost: 10
        assert usage.outcome("gen:1") == {**answer, "kind": "debit"}
    finally:
        usage.close()
    assert balance(session_factory) == 90 and count_rows(session_factory, UsageHistory) == 1
    assert_ledger_matches_balances(session_factory)


def test_refund_and_outcome_through_the_worker(client, session_factory):
    make_user(session_factory)
    assert client.debit("user_a", "AI_IMAGE_GENERATION", "img-1", cost=10)["remaining"] == 90
    refunds = [client.send_refund("user_a", "img-1-refund", refund_of="img-1") for _ in range(2)]
    assert sorted(r["status"] for r in answers(refunds)) == ["applied", "duplicate"]
    assert client.outcome("img-1-refund")["remaining"] == 100
    assert balance(session_factory) == 100
