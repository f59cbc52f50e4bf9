"""What waits for a worker: the oldest `webhooks.process` message still queued in Redis, or taken
by a worker (reserved, not acked) less than SWEEP_PENDING_AFTER_SECONDS ago.

Kombu's Redis transport keeps a queue as a list: producers LPUSH, consumers BRPOP, so the oldest
queued message is at the list's tail, and every message a worker took is older still. Any pending
row enqueued before the oldest waiting message has no message behind it: Redis lost it, or a
worker that took it long ago died. The sweeper uses this to leave alone the rows whose message
is merely waiting in a backlog or in a live worker's prefetch window.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.exceptions import RedisError

from celery_ext.redis_transport import held_messages, task_of_message
from messaging.celery_config import PROCESS_WEBHOOK_TASK, WEBHOOKS_QUEUE

log = logging.getLogger(__name__)

# How many of the oldest messages to look through for one that names an inbox row (an
# ingest message, stored by the receiver while PostgreSQL was down, names none).
_LOOK_AT = 20


def oldest_waiting_inbox_id(broker_url: str, queue: str = WEBHOOKS_QUEUE, held_within: float = 0.0) -> int | None:
    """The inbox id of the oldest `webhooks.process` message a worker took less than
    `held_within` seconds ago and has not acked, else of the oldest waiting in `queue`; None if
    there is none, or the broker could not be read (the sweeper then sweeps without it)."""
    try:
        with redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2) as client:
            held = held_messages(client, time.time() - held_within) if held_within > 0 else []
            oldest_first = list(reversed(client.lrange(queue, -_LOOK_AT, -1)))
    except (RedisError, OSError) as exc:
        log.warning("inbox.sweep could not read the %s queue: %s", queue, type(exc).__name__)
        return None
    for task, kwargs in held:  # taken before anything still queued
        if task == PROCESS_WEBHOOK_TASK and isinstance(kwargs.get("inbox_id"), int):
            return int(kwargs["inbox_id"])
    for raw in oldest_first:
        inbox_id = _process_message_inbox_id(raw)
        if inbox_id is not None:
            return inbox_id
    return None


def _process_message_inbox_id(raw: Any) -> int | None:
    """The `inbox_id` of a queued `webhooks.process` message, else None."""
    task = task_of_message(raw)
    if task is None or task[0] != PROCESS_WEBHOOK_TASK:
        return None
    inbox_id = task[1].get("inbox_id")
    return inbox_id if isinstance(inbox_id, int) else None
