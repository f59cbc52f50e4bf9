"""The worker fixture runs a real `celery worker` that takes tasks from Redis."""

from __future__ import annotations


def test_worker_runs_a_task_through_the_broker_and_result_backend(celery_worker, producer):
    # celery.accumulate is built into every Celery app: it returns its arguments.
    result = producer.send_task("celery.accumulate", args=(3, 4), queue="webhooks")
    assert result.get(timeout=20) == [3, 4]
    replies = producer.control.ping(destination=[celery_worker.name], timeout=2)
    assert replies and celery_worker.name in replies[0]
