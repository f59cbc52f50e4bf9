"""How many messages wait in each Celery queue, read from the Redis broker (every priority list),
and how many deliveries wait in the fallback store (queued while PostgreSQL was down)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from celery_ext.redis_transport import queue_lists
from messaging.celery_config import celery_config
from messaging.fallback_store import FallbackStore
from models.settings import Settings


def queue_names(settings: Settings) -> list[str]:
    """Every queue the workers consume, as the Celery configuration declares them."""
    return [queue.name for queue in celery_config(settings)["task_queues"]]


def queue_lengths(client: redis.Redis, names: list[str]) -> dict[str, int]:
    pipeline = client.pipeline(transaction=False)
    lists = {name: queue_lists(name) for name in names}
    for name in names:
        for key in lists[name]:
            pipeline.llen(key)
    counts = iter(pipeline.execute())
    return {name: sum(next(counts) for _ in lists[name]) for name in names}


@dataclass(frozen=True)
class FallbackBacklog:
    entries: int
    oldest_age_seconds: float | None  # None: nothing waits


def fallback_backlog(client: redis.Redis) -> FallbackBacklog:
    store = FallbackStore(client)
    return FallbackBacklog(store.length(), store.oldest_age_seconds())
