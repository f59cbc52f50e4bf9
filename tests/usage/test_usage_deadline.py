"""No late charge: a debit carries a deadline (`not_after`, and the message's `expires`). Past it
nothing is taken, its caller's final answer is `expired` whichever way the debit ends (run late,
or its message discarded unrun), and the same key afterwards answers duplicate/expired."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from models.app import UsageHistory
from models.usage import UsageRequest
from tests.support.inbox import deliver, payload
from tests.support.usage import balance, count_rows, debit, make_user, stored_status, wait_for_retry
from worker.usage import debits

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"  # the id in the documented user.created payload
EXPIRED = {"status": "expired", "remaining": None, "usage_id": None}


class TestInProcess:
    def test_a_debit_past_its_deadline_takes_nothing_and_stores_expired(self, session_factory):
        make_user(session_factory)
        assert debit(session_factory, "late-1", cost=5, not_after=time.time() - 1) == EXPIRED
        assert balance(session_factory) == 100 and count_rows(session_factory, UsageHistory) == 0
        assert stored_status(session_factory, "late-1") == "expired"
        again = debit(session_factory, "late-1", cost=5, not_after=time.time() + 60)
        assert (again["status"], again["original_status"]) == ("duplicate", "expired")
        assert balance(session_factory) == 100

    def test_nothing_commits_after_its_deadline_by_postgresqls_clock(self, session_factory):
        """A transaction that applied a debit in time but reaches its COMMIT past the debit's
        deadline (it waited on something else) fails to commit: nothing is taken."""
        make_user(session_factory)
        request = debits.DebitRequest("user_a", "AI_TEXT_CHAT", "slow", cost=5, not_after=time.time() + 0.3)
        with pytest.raises(DBAPIError) as refused, session_factory.begin() as session:
            assert debits.debit(session, request)["status"] == "applied"
            time.sleep(0.5)
        assert refused.value.orig.sqlstate == "PWD01" and "pedro_webhooks_deadline" in str(refused.value.orig)
        assert balance(session_factory) == 100 and count_rows(session_factory, UsageHistory) == 0
        assert stored_status(session_factory, "slow") is None

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


# The deadline of a debit that must run (and find no user) before it: the worker only has to
# take one message off an idle queue in that time, even on a loaded machine; the test then
# waits out the deadline, so it is no longer than it needs to be.
FIRST_RUN_WITHIN = 10.0


def test_a_user_who_arrives_after_the_deadline_is_not_charged(client, producer, session_factory):
    wait = FIRST_RUN_WITHIN
    pending = client.send_debit(CLERK_ID, "AI_TEXT_CHAT", "before-user", cost=1, wait=wait, wait_for_user=300)
    wait_for_retry(producer, pending, timeout=wait)  # ran, found no user, waits (never past the deadline)
    assert pending.answer() == EXPIRED  # the caller's final answer, once its deadline passed
    deliver(session_factory, "clerk", payload("clerk/user.created"))  # the user arrives too late

    assert client.outcome("before-user") == {**EXPIRED, "kind": "debit"}
    assert count_rows(session_factory, UsageHistory) == 0
    assert balance(session_factory, CLERK_ID) == 100
    again = client.debit(CLERK_ID, "AI_TEXT_CHAT", "before-user", cost=1)
    assert (again["status"], again["original_status"]) == ("duplicate", "expired")
    assert balance(session_factory, CLERK_ID) == 100


def test_an_expired_message_never_runs_and_its_caller_gets_expired(client, session_factory):
    """A signed debit whose deadline (and message `expires`) passed before a worker took it:
    Celery discards it unrun, and the worker settles its key (`usage.settle`): the caller's
    own task id gets `expired` without asking, and the key keeps it."""
    make_user(session_factory)
    pending = client.send_debit("user_a", "AI_TEXT_CHAT", "stale-1", cost=7, wait=0.001)
    time.sleep(0.01)
    assert client.wait_for_answer(pending.task, pending.task_id, time.monotonic() + 30) == EXPIRED
    assert balance(session_factory) == 100 and count_rows(session_factory, UsageHistory) == 0
    assert stored_status(session_factory, "stale-1") == "expired"
    again = client.debit("user_a", "AI_TEXT_CHAT", "stale-1", cost=7)
    assert (again["status"], again["original_status"]) == ("duplicate", "expired")
    assert balance(session_factory) == 100


def test_the_client_sets_the_deadline_from_its_wait(client, session_factory):
    make_user(session_factory)
    before = time.time()
    assert client.debit("user_a", "AI_TEXT_CHAT", "timed", cost=1, wait=20)["status"] == "applied"
    with session_factory() as session:
        stored = session.scalar(select(UsageRequest).where(UsageRequest.idempotency_key == "timed"))
        assert stored is not None
        assert before + 20 <= stored.request["not_after"] <= time.time() + 20
        assert stored.not_after is not None and abs(stored.not_after.timestamp() - stored.request["not_after"]) < 0.01
        assert stored.service == "tests"
    with pytest.raises(ValueError, match="wait"):
        client.debit("user_a", "AI_TEXT_CHAT", "no-wait", wait=0)
