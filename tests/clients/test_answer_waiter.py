"""The Python client's wait for an answer (clients/python/pedro_credits/answers.py), on a real
Redis: an answer stored before the wait is read, one published during it is received, anything
else is ignored, and one thread's waits share one subscriber connection."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from pedro_credits.answers import AnswerWaiter


@pytest.fixture
def named_results(redis_urls) -> Iterator[tuple[redis.Redis, str]]:
    """A Redis client whose every connection carries a name of its own (CLIENT LIST finds them)."""
    name = f"waiter-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_urls["scratch"], client_name=name)
    yield client, name
    client.close()


def accept_answers(raw: bytes | str | None) -> str | None:
    """The test's notion of an answer: any value starting with `answer:`."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    return text if text.startswith("answer:") else None


def later(seconds: float, action) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_answer_stored_before_the_wait_is_read(named_results):
    results, _ = named_results
    key = f"answer-{uuid.uuid4().hex}"
    results.set(key, "answer:stored", ex=60)
    assert AnswerWaiter(results).wait(key, time.monotonic() + 5, accept_answers) == "answer:stored"


def test_an_answer_published_during_the_wait_is_received_and_anything_else_ignored(named_results):
    results, _ = named_results
    key = f"answer-{uuid.uuid4().hex}"

    def publish() -> None:
        results.publish(key, "garbage")  # not an answer: ignored
        results.publish(key, "answer:published")

    publisher = later(0.2, publish)
    started = time.monotonic()
    assert AnswerWaiter(results).wait(key, started + 10, accept_answers) == "answer:published"
    assert time.monotonic() - started < 5  # received when published, not found by a later read
    publisher.join()


def test_no_answer_by_the_deadline_is_none(named_results):
    results, _ = named_results
    key = f"answer-{uuid.uuid4().hex}"
    started = time.monotonic()
    assert AnswerWaiter(results).wait(key, started + 0.5, accept_answers) is None
    assert 0.5 <= time.monotonic() - started < 3


def test_one_threads_waits_share_one_subscriber_and_skip_what_an_earlier_wait_left(named_results):
    """Twenty waits on one thread. Each answer found by the read is also published while the wait
    is subscribed (as Celery's backend publishes what it stored), so it stays on the connection
    for the next wait, whose own answer comes later by publication only: a waiter that took the
    earlier key's message would answer the previous number. And the connections this client
    opened stay two (the reads' and the subscriber), where a subscriber per wait opened twenty."""
    results, name = named_results
    waiter = AnswerWaiter(results)
    seen: set[int] = set()
    for n in range(20):
        key = f"answer-{uuid.uuid4().hex}"
        if n % 2 == 0:
            results.set(key, f"answer:{n}", ex=60)

            def read_then_publish(raw: bytes | str | None, key: str = key) -> str | None:
                results.publish(key, raw or "")  # left on the connection for the next wait
                return accept_answers(raw)

            assert waiter.wait(key, time.monotonic() + 5, read_then_publish) == f"answer:{n}"
        else:
            publisher = later(0.05, lambda key=key, n=n: results.publish(key, f"answer:{n}"))
            assert waiter.wait(key, time.monotonic() + 5, accept_answers) == f"answer:{n}"
            publisher.join()
        seen |= {int(client["id"]) for client in results.client_list() if client.get("name") == name}
    assert len(seen) <= 2, f"{len(seen)} connections for 20 waits"
    waiter.close()


def test_the_wait_survives_a_dropped_subscriber_connection(named_results):
    """Redis drops the subscriber (as a restart does): the waiter subscribes again and reads."""
    results, name = named_results
    waiter = AnswerWaiter(results)
    first = f"answer-{uuid.uuid4().hex}"
    results.set(first, "answer:first", ex=60)
    assert waiter.wait(first, time.monotonic() + 5, accept_answers) == "answer:first"
    reads = results.client_id()  # the pool's one connection for commands; the other is the subscriber
    (subscriber,) = [c["id"] for c in results.client_list() if c.get("name") == name and int(c["id"]) != reads]
    assert results.client_kill_filter(_id=subscriber) == 1  # this test's connection only: Redis is shared
    second = f"answer-{uuid.uuid4().hex}"

    def store() -> None:
        results.set(second, "answer:second", ex=60)
        results.publish(second, "answer:second")

    publisher = later(0.3, store)
    assert waiter.wait(second, time.monotonic() + 10, accept_answers) == "answer:second"
    publisher.join()


def test_a_forked_child_waits_on_a_subscriber_of_its_own(named_results):
    """A service forking workers after the client was made (gunicorn --preload, Celery's prefork):
    the child must not read answers off the parent's socket, nor the parent off the child's."""
    results, _ = named_results
    waiter = AnswerWaiter(results)
    before = f"answer-{uuid.uuid4().hex}"
    results.set(before, "answer:parent", ex=60)
    assert waiter.wait(before, time.monotonic() + 5, accept_answers) == "answer:parent"  # parent subscribed
    child_key, parent_key = f"answer-{uuid.uuid4().hex}", f"answer-{uuid.uuid4().hex}"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its answer comes by publication only, after it subscribed
        try:
            found = waiter.wait(child_key, time.monotonic() + 10, accept_answers)
            os.write(write, (found or "none").encode())
        finally:
            os._exit(0)
    os.close(write)

    def publish() -> None:  # both wait at once, each for an answer that comes by publication only
        results.publish(child_key, "answer:child")
        results.publish(parent_key, "answer:parent-again")

    publisher = later(0.5, publish)
    assert waiter.wait(parent_key, time.monotonic() + 10, accept_answers) == "answer:parent-again"
    publisher.join()
    with os.fdopen(read) as from_child:
        assert from_child.read() == "answer:child"
    os.waitpid(pid, 0)
