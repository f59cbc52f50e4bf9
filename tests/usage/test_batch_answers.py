"""A batch's answers go to the result backend together (worker.usage.batches.store_answers), as
`mark_as_done` would store each: what a caller's `get()` reads, and never over a stored SUCCESS."""

from __future__ import annotations

import uuid

from worker.usage.batches import store_answers


def test_each_answer_is_stored_as_its_tasks_success(producer, redis_client):
    ids = [str(uuid.uuid4()) for _ in range(3)]
    answers = [{"status": "applied", "remaining": 10 - n} for n in range(3)]

    assert store_answers(producer.backend, list(zip(ids, answers, strict=True)))

    for task_id, expected in zip(ids, answers, strict=True):
        result = producer.AsyncResult(task_id)
        assert result.state == "SUCCESS"
        assert result.get(timeout=5) == expected
        assert result.date_done is not None
        assert producer.backend.client.ttl(producer.backend.get_key_for_task(task_id)) > 0  # result_expires


def test_a_stored_success_is_never_overwritten(producer, redis_client):
    first, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    producer.backend.mark_as_done(first, {"status": "applied", "remaining": 9})

    assert store_answers(producer.backend, [(first, {"status": "duplicate"}), (fresh, {"status": "applied"})])

    assert producer.AsyncResult(first).get(timeout=5) == {"status": "applied", "remaining": 9}
    assert producer.AsyncResult(fresh).get(timeout=5) == {"status": "applied"}


def test_an_unreachable_backend_is_reported_not_raised(producer):
    broken = producer.backend.__class__(app=producer, url="redis://127.0.0.1:1/0")
    assert store_answers(broken, [(str(uuid.uuid4()), {"status": "applied"})]) is False
