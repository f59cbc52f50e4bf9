"""Loaded into a real test worker with `--include`: holds chosen `webhooks.process` runs.

A run for an inbox id listed in BLOCK_INBOX_IDS waits, before its task starts, until the test
pushes to the Redis list BLOCK_RELEASE (on the worker's broker, REDIS_URL): its pool process is
busy meanwhile, so the worker's further messages stay prefetched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import redis
from celery.signals import task_prerun

BLOCK_RELEASE = "tests:block-release"
_MOST_SECONDS = 120  # never hang a worker for ever if a test died before releasing it


@task_prerun.connect
def _hold(task: Any = None, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    blocked = {int(part) for part in os.environ.get("BLOCK_INBOX_IDS", "").split(",") if part.strip()}
    if task is not None and task.name == "webhooks.process" and (kwargs or {}).get("inbox_id") in blocked:
        with redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=_MOST_SECONDS + 5) as client:
            client.blpop([BLOCK_RELEASE], timeout=_MOST_SECONDS)


def blocking_worker(producer: Any, queue: str, prefetch: int, blocked: Iterable[int]) -> Any:
    """A test worker on `queue` alone, with one pool process, this plugin loaded, and the
    `webhooks.process` runs of the `blocked` inbox ids held (not started)."""
    from tests.support.celery_worker import WorkerProcess  # the test's side only: not in the worker

    return WorkerProcess(
        producer,
        queues=queue,
        concurrency=1,
        extra_args=(f"--prefetch-multiplier={prefetch}", "--include=tests.inbox.block_plugin"),
        env={"BLOCK_INBOX_IDS": ",".join(str(inbox_id) for inbox_id in blocked)},
    )
