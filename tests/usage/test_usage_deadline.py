"""No late charge: a debit carries a deadline (`not_after`, and the message's `expires`). Past it
nothing is taken, `expired` is stored on the key whichever way the debit ends (run late, or its
message discarded unrun by Celery), and the same key afterwards answers duplicate/expired."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from celery.exceptions import TaskRevokedError
from pedro_credits import CreditsClient
from sqlalchemy import select

from models.app import UsageHistory
from models.usage import UsageRequest
from tests.support.celery_worker import wait_for_state
from tests.support.inbox import assert_ledger_matches_balances, deliver, payload
from tests.support.usage import balance, count_rows, debit, make_user, stored_status

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"  # the id in the documented user.created payload
EXPIRED = {"status": "expired", "remaining": None, "usage_id": None}


def _outcome_once_stored(client: CreditsClient, key: str, timeout: float = 30) -> dict:
    """`usage.outcome(key)`, polled until the key has an answer."""
    deadline = time.monotonic() + timeout
    while (answer := client.outcome(key).get(timeout=30))["status"] == "unknown":
        assert time.monotonic() < deadline, f"no answer stored for {key}"
        time.sleep(0.05)
    return answer


class TestInProcess:
    def test_a_debit_past_its_deadline_takes_nothing_and_stores_expired(self, session_factory):
        make_user(session_factory)
        assert debit(session_factory, "late-1", cost=5, not_after=time.time() - 1) == EXPIRED
        assert balance(session_factory) == 100 and count_rows(session_factory, UsageHistory) == 0
        assert stored_status(session_factory, "late-1") == "expired"
        again = debit(session_factory, "late-1", cost=5, not_after=time.time() + 60)
        assert (again["status"], again["original_status"]) == ("duplicate", "expired")
        assert balance(session_factory) == 100

    def test_a_debit_within_its_deadline_applies(self, session_factory):
        make_user(session_factory)
        assert debit(session_factory, "on-time", cost=5, not_after=time.time() + 60)["status"] == "applied"
        assert balance(session_factory) == 95

    def test_an_applied_debit_seen_again_past_its_deadline_is_still_applied(self, session_factory):
        """A redelivered message of a debit that did apply answers what happened, not expired."""
        make_user(session_factory)
        assert debit(session_factory, "done", cost=5)["status"] == "applied"
        again = debit(session_factory, "done", cost=5, not_after=time.time() - 1)
        assert (again["status"], again["original_status"]) == ("duplicate", "applied")


@pytest.fixture
def client(celery_worker, producer, session_factory):
    yield CreditsClient(producer.conf.broker_url)
    assert_ledger_matches_balances(session_factory)


def test_a_user_who_arrives_after_the_deadline_is_not_charged(client, session_factory):
    wait = 3.0
    result = client.debit(CLERK_ID, "AI_TEXT_CHAT", "before-user", cost=1, wait=wait, wait_for_user=300)
    past_deadline = time.time() + wait
    wait_for_state(result, "RETRY")  # ran, found no user, waits for it (never past the deadline)
    while time.time() <= past_deadline:  # the caller gave up
        time.sleep(0.05)
    deliver(session_factory, "clerk", payload("clerk/user.created"))  # the user arrives too late

    assert _outcome_once_stored(client, "before-user") == {**EXPIRED, "kind": "debit"}
    assert count_rows(session_factory, UsageHistory) == 0
    assert balance(session_factory, CLERK_ID) == 100
    again = client.debit(CLERK_ID, "AI_TEXT_CHAT", "before-user", cost=1).get(timeout=30)
    assert (again["status"], again["original_status"]) == ("duplicate", "expired")
    assert balance(session_factory, CLERK_ID) == 100


def test_an_expired_message_never_runs_and_still_leaves_expired_on_its_key(client, producer, session_factory):
    """Sent with an `expires` already past and no `not_after` at all: had the task run, it would
    have applied. Celery discards it unrun; the worker stores `expired` for its key anyway."""
    make_user(session_factory)
    kwargs = {"clerk_user_id": "user_a", "operation": "AI_TEXT_CHAT", "idempotency_key": "stale-1", "cost": 7}
    result = producer.send_task("usage.debit", kwargs=kwargs, expires=datetime.now(UTC) - timedelta(seconds=5))

    assert _outcome_once_stored(client, "stale-1") == {**EXPIRED, "kind": "debit"}
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    assert balance(session_factory) == 100 and count_rows(session_factory, UsageHistory) == 0
    again = client.debit("user_a", "AI_TEXT_CHAT", "stale-1", cost=7).get(timeout=30)
    assert (again["status"], again["original_status"]) == ("duplicate", "expired")
    assert balance(session_factory) == 100


def test_the_client_sets_the_deadline_from_its_wait(client, session_factory):
    make_user(session_factory)
    before = time.time()
    result = client.debit("user_a", "AI_TEXT_CHAT", "timed", cost=1, wait=20)
    assert result.get(timeout=20)["status"] == "applied"
    with session_factory() as session:
        stored = session.scalar(select(UsageRequest.request).where(UsageRequest.idempotency_key == "timed"))
    assert before + 20 <= stored["not_after"] <= time.time() + 20
    with pytest.raises(ValueError, match="wait"):
        client.debit("user_a", "AI_TEXT_CHAT", "no-wait", wait=0)
