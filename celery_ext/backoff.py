"""The countdown Celery's `autoretry_for` gives a task's next try, for code that retries by hand."""

from __future__ import annotations

from celery import Task
from celery.utils.time import get_exponential_backoff_interval


def retry_countdown(task: Task, retries: int) -> float:
    """What autoretry would wait before try `retries` + 1 of `task`: exponential in
    `retry_backoff`, capped at `retry_backoff_max`, jittered when `retry_jitter` (Celery's own
    helper, with the task's own options); `default_retry_delay` when it has no backoff."""
    backoff = getattr(task, "retry_backoff", False)
    if not backoff:
        return float(getattr(task, "default_retry_delay", 180))
    return float(
        get_exponential_backoff_interval(
            factor=int(backoff),
            retries=retries,
            maximum=getattr(task, "retry_backoff_max", 600),
            full_jitter=getattr(task, "retry_jitter", True),
        )
    )
