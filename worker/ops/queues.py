"""How many messages wait in each Celery queue, read from the Redis broker.

kombu's Redis transport keeps a queue as a LIST named like it and, for messages sent with a
priority, one more LIST per priority step, named `<queue>\\x06\\x16<step>`: a queue's length is
the sum of all of them.
"""

from __future__ import annotations

import redis

from models.settings import Settings
from worker.celery_config import celery_config

# kombu.transport.redis: PRIORITY_STEPS and the separator of a priority queue's name.
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEPARATOR = "\x06\x16"


def queue_names(settings: Settings) -> list[str]:
    """Every queue the workers consume, as the Celery configuration declares them."""
    return [queue.name for queue in celery_config(settings)["task_queues"]]


def _lists_of(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]


def queue_lengths(client: redis.Redis, names: list[str]) -> dict[str, int]:
    pipeline = client.pipeline(transaction=False)
    for name in names:
        for key in _lists_of(name):
            pipeline.llen(key)
    counts = iter(pipeline.execute())
    return {name: sum(next(counts) for _ in _PRIORITY_STEPS) for name in names}
