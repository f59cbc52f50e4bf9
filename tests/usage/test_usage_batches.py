"""Debits applied in batches by a real worker (worker.usage.batches): one transaction for many
messages, and every guarantee of one debit kept.

The worker here has one pool process. A debit of a user whose balance row this test holds
locked keeps that process busy; the debits sent meanwhile wait in the worker's main process and
leave together as the next batch once the lock is released. Rows written by one transaction
share its `xmin`: that is how a test sees they were one batch.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import pytest
import redis
from celery.signals import after_task_publish
from pedro_credits import CreditsClient
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from celery_ext.redis_transport import queue_lists
from messaging.celery_config import USAGE_QUEUE, create_producer
from models.app import UsageHistory
from tests.support.celery_worker import WorkerProcess
from tests.support.inbox import assert_ledger_matches_balances, deliver, payload
from tests.support.servers import claim_redis_databases
from tests.support.usage import (
    answers,
    balance,
    count_rows,
    credits_client,
    ledger_deltas,
    make_user,
    stored_status,
    wait_for_retry,
)
from worker.usage.batches import MAX_BATCH, MAX_HELD_PER_PROCESS

pytestmark = pytest.mark.celery_worker

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"  # the id in the documented user.created payload
# Each lingers 3 s after its commit, then dies: past the 2 s its caller waits, so the requeued
# message has expired by then (the case billiard's late report of a lost process makes).
KILL_AFTER_COMMIT = ("kill-alone:3", "kill-batch-2:3")
KILLED = Path(tempfile.mkdtemp(prefix="pw-killed-after-commit-"))  # one marker file per kill


@pytest.fixture(scope="module")
def batch_worker(settings, servers, tmp_path_factory) -> Iterator[WorkerProcess]:
    """One worker, one pool process, on a broker of its own (no other test worker takes these
    messages), with a lock timeout long enough for a test to hold a balance row, and a pool
    process that dies right after committing a debit of a key in KILL_AFTER_COMMIT_KEYS."""
    with ExitStack() as stack:
        (number,) = stack.enter_context(claim_redis_databases(servers[1], count=1))
        broker = f"{servers[1]}/{number}"
        producer = create_producer(settings.model_copy(update={"redis_url": SecretStr(broker)}))
        stack.callback(producer.close)
        worker = WorkerProcess(
            producer,
            queues="usage",
            concurrency=1,
            env={
                "REDIS_URL": broker,
                "DB_LOCK_TIMEOUT_MS": "60000",
                "KILL_AFTER_COMMIT_KEYS": ",".join(KILL_AFTER_COMMIT),
                "KILL_MARKER_DIR": str(KILLED),
            },
            extra_args=("--include=tests.usage.kill_after_commit_plugin",),
            loglevel="INFO",
            output=tmp_path_factory.mktemp("batch-worker") / "worker.log",
        )
        worker.start()
        stack.callback(worker.stop)
        yield worker


@pytest.fixture
def client(batch_worker, session_factory) -> Iterator[CreditsClient]:
    client = credits_client(batch_worker.producer.conf.broker_url)
    yield client
    client.close()
    assert_ledger_matches_balances(session_factory)


@contextmanager
def balance_locked(factory: sessionmaker[Session], clerk_id: str) -> Iterator[None]:
    """Hold the user's balance row locked (FOR UPDATE) until the block ends."""
    with factory.begin() as session:
        session.execute(
            text('SELECT 1 FROM "CreditBalance" WHERE "clerkUserId" = :clerk_id FOR UPDATE'), {"clerk_id": clerk_id}
        )
        yield


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def wait_until_a_debit_waits_for_a_lock(factory: sessionmaker[Session], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while True:
        with factory() as session:
            if session.scalar(query):
                return
        assert time.monotonic() < deadline, "no debit is waiting for the locked balance"
        time.sleep(0.02)


@contextmanager
def published() -> Iterator[list[str]]:
    """The ids of the task messages this process publishes while the block runs."""
    ids: list[str] = []

    def record(headers: dict | None = None, **_: object) -> None:
        ids.append((headers or {})["id"])

    after_task_publish.connect(record, weak=False)
    try:
        yield ids
    finally:
        after_task_publish.disconnect(record)


def held_by(worker: WorkerProcess) -> tuple[set[str], set[str]]:
    """The ids of the messages the worker holds (taken, not acked): waiting in its main process,
    and running in its pool. Its own answer: Celery reserves a request before the batcher gets it."""
    inspect = worker.producer.control.inspect(destination=[worker.name], timeout=2)
    waiting, running = inspect.reserved() or {}, inspect.active() or {}
    return (
        {request["id"] for request in waiting.get(worker.name, [])},
        {request["id"] for request in running.get(worker.name, [])},
    )


def wait_until_the_worker_holds(worker: WorkerProcess, ids: list[str], timeout: float = 60) -> None:
    """Every message in `ids` is in the worker's hands (the queue's list being empty is not
    enough: a message popped from it may not have reached the batcher yet)."""
    deadline = time.monotonic() + timeout
    while not set(ids) <= set.union(*held_by(worker)):
        assert time.monotonic() < deadline, "the worker did not take every debit"
        time.sleep(0.05)


@contextmanager
def pool_busy(factory: sessionmaker[Session], client: CreditsClient, worker: WorkerProcess) -> Iterator[list[str]]:
    """The pool process blocked on a locked balance while the block sends; released at its end,
    once the worker holds every message sent (so they all leave in the next batch). Yields the
    ids of the messages sent meanwhile, which the release waits for (the block may clear it)."""
    make_user(factory, "user_blocker", credits=10)
    with balance_locked(factory, "user_blocker"), published() as sent:
        blocker = client.send_debit("user_blocker", "AI_TEXT_CHAT", "blocker", cost=1)
        wait_until_a_debit_waits_for_a_lock(factory)
        yield sent
        wait_until_the_worker_holds(worker, sent)
    assert blocker.answer()["status"] == "applied"


def transactions_of(factory: sessionmaker[Session], prefix: str) -> int:
    """How many transactions wrote the keys starting with `prefix`."""
    with factory() as session:
        return session.scalar(
            text("SELECT count(DISTINCT xmin::text) FROM ingest.usage_requests WHERE idempotency_key LIKE :p"),
            {"p": f"{prefix}%"},
        )


def test_the_batching_strategy_is_installed_on_usage_debit(batch_worker):
    """Debits queued while the pool is busy must leave as one transaction: if Celery stopped
    building `usage.debit`'s Strategy, batching would be off without any error but this one."""
    log = batch_worker.output.read_text()
    assert "debits.batching_installed" in log, "the worker did not install the debit batching strategy"
    assert "batching_not_installed" not in log


def test_duplicates_inside_one_batch_answer_duplicate(client, session_factory, batch_worker):
    make_user(session_factory)
    with pool_busy(session_factory, client, batch_worker):
        sent = [client.send_debit("user_a", "AI_TEXT_CHAT", f"dup-{n // 2}", cost=2) for n in range(10)]
    answers = [result.answer() for result in sent]

    assert [answer["status"] for answer in answers] == ["applied", "duplicate"] * 5
    for first, second in zip(answers[::2], answers[1::2], strict=True):
        assert second == {**first, "status": "duplicate", "original_status": "applied"}
    assert transactions_of(session_factory, "dup-") == 1
    assert balance(session_factory) == 90
    assert count_rows(session_factory, UsageHistory) == 5 + 1  # and the blocker's


def test_a_batch_refuses_exactly_the_later_debits_a_balance_cannot_pay(client, session_factory, batch_worker):
    make_user(session_factory, credits=10)
    make_user(session_factory, "user_b", credits=100)
    with pool_busy(session_factory, client, batch_worker):
        sent = [client.send_debit("user_a", "AI_TEXT_CHAT", f"over-{n}", cost=1) for n in range(15)]
        other = [client.send_debit("user_b", "AI_TEXT_CHAT", f"over-b-{n}", cost=1) for n in range(5)]
    answers = [result.answer() for result in sent]

    assert [answer["status"] for answer in answers] == ["applied"] * 10 + ["insufficient_credits"] * 5
    assert [answer["remaining"] for answer in answers] == [*range(9, -1, -1), *[0] * 5]
    assert [result.answer()["remaining"] for result in other] == [99, 98, 97, 96, 95]
    assert transactions_of(session_factory, "over-") == 1
    assert balance(session_factory) == 0 and balance(session_factory, "user_b") == 95
    assert count_rows(session_factory, UsageHistory) == 10 + 5 + 1  # and the blocker's


def batch_sizes(factory: sessionmaker[Session], prefix: str) -> list[int]:
    """How many of the keys starting with `prefix` each transaction wrote, largest first."""
    with factory() as session:
        query = text(
            "SELECT count(*) FROM ingest.usage_requests WHERE idempotency_key LIKE :p "
            "GROUP BY xmin::text ORDER BY 1 DESC"
        )
        return list(session.scalars(query, {"p": f"{prefix}%"}))


def test_a_batch_holds_at_most_100_debits(client, session_factory, batch_worker):
    """150 debits held while the pool is busy leave as a batch of 100, then one of 50."""
    make_user(session_factory, credits=1000)
    with pool_busy(session_factory, client, batch_worker):
        sent = [client.send_debit("user_a", "AI_TEXT_CHAT", f"cap-{n:03}", cost=1, wait=300) for n in range(150)]
    assert {answer["status"] for answer in answers(sent)} == {"applied"}
    assert batch_sizes(session_factory, "cap-") == [MAX_BATCH, 50] == [100, 50]
    assert balance(session_factory) == 850


def _usage_queue_length(broker_url: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return sum(client.llen(name) for name in queue_lists(USAGE_QUEUE))
    finally:
        client.close()


def test_the_worker_holds_at_most_200_debits_per_pool_process(client, session_factory, batch_worker):
    """While its one pool process is busy, the worker takes debits off the queue until it holds
    200 waiting (its prefetch window: Celery's 1 for the running job, plus one for each debit
    the batcher holds, at most 200 per pool process); the rest stay in Redis, where another
    worker could take them."""
    make_user(session_factory, credits=1000)
    with pool_busy(session_factory, client, batch_worker) as awaited:
        sent = [client.send_debit("user_a", "AI_TEXT_CHAT", f"win-{n:03}", cost=1, wait=300) for n in range(250)]
        broker = batch_worker.producer.conf.broker_url
        inspect = batch_worker.producer.control.inspect(destination=[batch_worker.name], timeout=2)
        deadline = time.monotonic() + 60
        while True:  # until the window is full (the worker holds what it may) or the queue is empty
            waiting, running = held_by(batch_worker)
            window = (inspect.stats() or {})[batch_worker.name]["prefetch_count"]
            if len(waiting) + len(running) == window or not _usage_queue_length(broker):
                break
            assert time.monotonic() < deadline, "the worker neither filled its window nor emptied the queue"
            time.sleep(0.05)
        # The blocker (running) and 200 waiting: 250 + 1 sent, 50 still in Redis.
        assert len(waiting | running) == MAX_HELD_PER_PROCESS + 1 == 201
        assert _usage_queue_length(broker) == 250 + 1 - 201
        awaited.clear()  # the release cannot wait for the 50 the worker may not take yet
    assert {answer["status"] for answer in answers(sent)} == {"applied"}
    assert max(batch_sizes(session_factory, "win-")) <= MAX_BATCH and balance(session_factory) == 750


def test_an_unknown_user_waits_on_its_own_and_the_batch_goes_on(client, session_factory, batch_worker):
    make_user(session_factory)
    with pool_busy(session_factory, client, batch_worker):
        early = client.send_debit(CLERK_ID, "AI_TEXT_CHAT", "wait-early", cost=1, wait=60, wait_for_user=60)
        known = [client.send_debit("user_a", "AI_TEXT_CHAT", f"wait-known-{n}", cost=1) for n in range(3)]
    assert [result.answer()["status"] for result in known] == ["applied"] * 3
    wait_for_retry(batch_worker.producer, early)
    assert stored_status(session_factory, "wait-early") is None  # nothing of it was written

    deliver(session_factory, "clerk", payload("clerk/user.created"))
    assert early.answer()["status"] == "applied"
    assert balance(session_factory, CLERK_ID) == 99 and balance(session_factory) == 97


def test_a_batch_killed_before_its_commit_is_redelivered_and_applied_once(client, session_factory, batch_worker):
    make_user(session_factory)
    with balance_locked(session_factory, "user_a"):
        sent = [client.send_debit("user_a", "AI_TEXT_CHAT", f"killed-{n}", cost=1) for n in range(5)]
        wait_until_a_debit_waits_for_a_lock(session_factory)
        (child,) = batch_worker.pool_children()
        os.kill(child, signal.SIGKILL)  # the batch dies before its COMMIT: its messages are unacked
        psutil.Process(child).wait(timeout=30)  # dead before the row is free: it can commit nothing
    # Answered long before Redis's visibility timeout (an hour) would have redelivered them.
    answers = [result.answer() for result in sent]

    assert sorted(answer["remaining"] for answer in answers) == [95, 96, 97, 98, 99]
    assert {answer["status"] for answer in answers} == {"applied"}
    assert balance(session_factory) == 95 and count_rows(session_factory, UsageHistory) == 5
    assert ledger_deltas(session_factory, "usage") == [-1] * 5


def took_effect(answer: dict) -> bool:
    return answer["status"] == "applied"


def test_a_debit_whose_process_dies_right_after_its_commit_is_answered_applied(client, session_factory):
    """The pool process dies between the COMMIT and the answer (tests/usage/kill_after_commit_plugin.py),
    after its caller's deadline: its message comes back expired and is settled, and the caller,
    who asked too, hears `applied` from what PostgreSQL holds, not "not applied"."""
    make_user(session_factory)
    answer = client.debit("user_a", "AI_TEXT_CHAT", "kill-alone", cost=1, wait=2)
    assert (KILLED / "kill-alone").exists(), "the pool process was not killed after the commit"
    assert answer["status"] == "applied" and answer["remaining"] == 99, answer
    assert balance(session_factory) == 99 and count_rows(session_factory, UsageHistory) == 1
    assert client.outcome("kill-alone") == {**answer, "kind": "debit"}


def test_a_batch_whose_process_dies_right_after_its_commit_is_answered_applied(client, session_factory, batch_worker):
    make_user(session_factory)
    with pool_busy(session_factory, client, batch_worker):
        sent = [client.send_debit("user_a", "AI_TEXT_CHAT", f"kill-batch-{n}", cost=1, wait=2) for n in range(5)]
    answers = [pending.answer() for pending in sent]
    assert (KILLED / "kill-batch-2").exists(), "the pool process was not killed after the commit"
    assert [answer["status"] for answer in answers] == ["applied"] * 5, answers
    assert sorted(answer["remaining"] for answer in answers) == [95, 96, 97, 98, 99]
    assert transactions_of(session_factory, "kill-batch-") == 1
    assert balance(session_factory) == 95 and count_rows(session_factory, UsageHistory) == 5 + 1  # and the blocker's


def test_a_batch_never_commits_a_debit_after_its_deadline(client, session_factory, batch_worker):
    """Batch [user_a, deadline 1.5 s; user_b, whose balance row this test holds]: user_a's
    debit is taken first, then the batch waits for user_b's row. The wait ends at user_a's
    deadline (the lock timeout is capped at the time left): user_a's debit answers `expired`
    with nothing taken, and user_b's is applied again alone, once its row is free."""
    make_user(session_factory)
    make_user(session_factory, "user_b")
    with balance_locked(session_factory, "user_b"):
        with pool_busy(session_factory, client, batch_worker):
            late = client.send_debit("user_a", "AI_TEXT_CHAT", "deadline-a", cost=1, wait=1.5)
            patient = client.send_debit("user_b", "AI_TEXT_CHAT", "deadline-b", cost=1, wait=30)
        # The blocker is through: the batch [user_a, user_b] runs while user_b's row stays
        # locked, until user_a's deadline ends its wait and user_a's key is settled (committed
        # on its own, before user_b's debit is applied again): only then is the row let go.
        wait_for(lambda: stored_status(session_factory, "deadline-a") == "expired", "user_a's debit settled")
    assert late.answer() == {"status": "expired", "remaining": None, "usage_id": None}
    assert patient.answer()["status"] == "applied"
    assert balance(session_factory) == 100 and balance(session_factory, "user_b") == 99
    assert stored_status(session_factory, "deadline-a") == "expired"
    with session_factory() as session:
        users = session.scalars(text('SELECT "userId" FROM "UsageHistory" u JOIN "User" ON "User".id = u."userId"'))
        assert len(list(users)) == 2  # user_b's and the blocker's, none of user_a


def test_a_debit_waiting_for_its_balance_past_its_deadline_takes_nothing(client, session_factory):
    make_user(session_factory)
    with balance_locked(session_factory, "user_a"):
        pending = client.send_debit("user_a", "AI_TEXT_CHAT", "held-past", cost=1, wait=1.5)
        answer = pending.answer()
    assert answer == {"status": "expired", "remaining": None, "usage_id": None}
    assert balance(session_factory) == 100 and count_rows(session_factory, UsageHistory) == 0
    assert stored_status(session_factory, "held-past") == "expired"


@pytest.fixture
def two_usage_workers(settings, servers, tmp_path) -> Iterator[list[tuple[CreditsClient, Path, WorkerProcess]]]:
    """Two `usage` worker processes (one pool process each), each on a broker of its own, so a
    test decides which messages each one batches; one database."""
    with ExitStack() as stack:
        numbers = stack.enter_context(claim_redis_databases(servers[1], count=2))
        pairs = []
        for n, number in enumerate(numbers):
            broker, log = f"{servers[1]}/{number}", tmp_path / f"usage-{n}.log"
            producer = create_producer(settings.model_copy(update={"redis_url": SecretStr(broker)}))
            stack.callback(producer.close)
            worker = WorkerProcess(
                producer,
                queues="usage",
                concurrency=1,
                env={"REDIS_URL": broker, "DB_LOCK_TIMEOUT_MS": "60000"},
                loglevel="INFO",
                output=log,
            )
            worker.start()
            stack.callback(worker.stop)
            client = credits_client(broker)
            stack.callback(client.close)
            pairs.append((client, log, worker))
        yield pairs


def _deadlocks(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        session.execute(text("SELECT pg_stat_clear_snapshot()"))
        return session.scalar(text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"))


def test_two_usage_processes_on_resent_keys_never_deadlock(two_usage_workers, session_factory):
    """The keys of two users sent to one process, and re-sent in the opposite order to another:
    both batches start at once. Keys are claimed in key order and balances taken in user order in
    every batch, so neither waits on the other in a cycle: no deadlock, one effect per key."""
    (first, first_log, first_worker), (second, second_log, second_worker) = two_usage_workers
    make_user(session_factory, "user_blocker", credits=10)
    for user in ("user_a", "user_b"):
        make_user(session_factory, user, credits=1000)
    before = _deadlocks(session_factory)
    keys = [("user_a" if n % 3 else "user_b", f"resent-{n:02}") for n in range(30)]
    with balance_locked(session_factory, "user_blocker"):  # both pool processes busy meanwhile
        blockers = [
            client.send_debit("user_blocker", "AI_TEXT_CHAT", f"blocker-{n}", cost=1)
            for n, client in enumerate((first, second))
        ]
        sent = [first.send_debit(user, "AI_TEXT_CHAT", key, cost=1, wait=60) for user, key in keys]
        sent += [second.send_debit(user, "AI_TEXT_CHAT", key, cost=1, wait=60) for user, key in reversed(keys)]
        for worker, pending in ((first_worker, sent[:30]), (second_worker, sent[30:])):
            wait_until_the_worker_holds(worker, [one.task_id for one in pending])
    answers = [pending.answer() for pending in [*blockers, *sent]]

    assert {answer["status"] for answer in answers} <= {"applied", "duplicate"}
    assert sum(answer["status"] == "applied" for answer in answers[2:]) == 30  # one effect per key
    assert (balance(session_factory, "user_a"), balance(session_factory, "user_b")) == (980, 990)
    time.sleep(1.5)  # the statistics are flushed at most once a second
    assert _deadlocks(session_factory) == before
    for log in (first_log, second_log):
        written = log.read_text()
        assert "DeadlockDetected" not in written and "deadlock detected" not in written
        assert "debits.batch_rolled_back" not in written
