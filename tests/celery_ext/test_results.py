"""Answers go to the result backend together (celery_ext.results.store_successes), as
`mark_as_done` would store each: what a caller's `get()` reads, and never over a stored SUCCESS
the caller says to keep."""

from __future__ import annotations

import uuid

import pytest
import redis

from celery_ext.results import store_successes


def test_each_answer_is_stored_as_its_tasks_success(producer, redis_client):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    answers = [{"status": "applied", "remaining": 10 - n} for n in range(3)]

    store_successes(producer.backend, list(zip(ids, answers, strict=True)))

    for task_id, expected in zip(ids, answers, strict=True):
        result = producer.AsyncResult(task_id)
        assert result.state == "SUCCESS"
        assert result.get(timeout=5) == expected
        assert result.date_done is not None
        ttl = producer.backend.client.ttl(producer.backend.get_key_for_task(task_id))
        assert 24 * 3600 - 600 <= ttl <= 24 * 3600  # result_expires: kept a day


def test_a_stored_success_stands_unless_the_caller_says_otherwise(producer, redis_client):
    first, fresh, forged = (str(uuid.uuid4()) for _ in range(3))
    producer.backend.mark_as_done(first, {"status": "applied", "remaining": 9})
    producer.backend.mark_as_done(forged, {"status": "applied", "forged": True})

    def keep(_task_id: str, result: dict) -> bool:
        return not result.get("forged")

    answers = [(first, {"status": "duplicate"}), (fresh, {"status": "applied"}), (forged, {"status": "expired"})]
    store_successes(producer.backend, answers, keep=keep)

    assert producer.AsyncResult(first).get(timeout=5) == {"status": "applied", "remaining": 9}
    assert producer.AsyncResult(fresh).get(timeout=5) == {"status": "applied"}
    assert producer.AsyncResult(forged).get(timeout=5) == {"status": "expired"}


def test_an_unreachable_backend_raises(producer):
    broken = producer.backend.__class__(app=producer, url="redis://127.0.0.1:1/0")
    with pytest.raises(redis.ConnectionError):
        store_successes(broken, [(str(uuid.uuid4()), {"status": "applied"})])


def test_a_state_short_of_success_is_replaced_and_each_written_answer_published(producer, redis_client):
    """What a waiting caller receives: the written answers on their keys' channels, and nothing
    for a stored SUCCESS that stands. A RETRY (a debit that waited for its user) is replaced."""
    kept, retried, fresh = (str(uuid.uuid4()) for _ in range(3))
    producer.backend.mark_as_done(kept, {"status": "applied"})
    producer.backend.mark_as_retry(retried, RuntimeError("waiting_for_user"))
    client = producer.backend.client
    subscriber = client.pubsub()
    subscriber.subscribe(*(producer.backend.get_key_for_task(task_id) for task_id in (kept, retried, fresh)))
    confirmed = 0
    while confirmed < 3:  # Redis confirmed each subscription: nothing published later is missed
        message = subscriber.get_message(timeout=5)
        assert message is not None, "Redis did not confirm the subscriptions"
        confirmed += message["type"] == "subscribe"

    store_successes(
        producer.backend, [(kept, {"status": "again"}), (retried, {"status": "applied"}), (fresh, {"a": 1})]
    )

    published = {}
    while (message := subscriber.get_message(timeout=1)) is not None:
        meta = producer.backend.decode_result(message["data"])
        published[meta["task_id"]] = meta["result"]  # only messages: every confirmation came before
    subscriber.close()
    assert published == {retried: {"status": "applied"}, fresh: {"a": 1}}
    assert producer.AsyncResult(kept).get(timeout=5) == {"status": "applied"}
    assert producer.AsyncResult(retried).get(timeout=5) == {"status": "applied"}


def test_a_backend_that_does_not_store_json_keeps_celerys_own_rule(producer, redis_client):
    """The script reads stored values as JSON; a backend with another serializer goes through
    Celery's `mark_as_done`, whose stored SUCCESS stands as well (the script would overwrite it,
    seeing no JSON)."""
    backend = producer.backend.__class__(
        app=producer, url=producer.conf.result_backend, serializer="pickle", accept=["pickle", "json"]
    )
    task_id = str(uuid.uuid4())
    backend.mark_as_done(task_id, {"status": "applied", "remaining": 9})
    store_successes(backend, [(task_id, {"status": "duplicate"})])
    assert backend.get_task_meta(task_id)["result"] == {"status": "applied", "remaining": 9}
