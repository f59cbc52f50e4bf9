"""What waits in the broker: the oldest `webhooks.process` message still queued in Redis.

Kombu's Redis transport keeps a queue as a list: producers LPUSH, consumers BRPOP, so the oldest
waiting message is at the list's tail. Any pending row enqueued before that message was queued
has no message waiting behind it: its message is gone (Redis lost it) or in a worker's hands.
The sweeper uses this to leave alone the rows whose message is merely waiting in a backlog.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.exceptions import RedisError

from celery_ext.redis_transport import task_of_message
from messaging.celery_config import PROCESS_WEBHOOK_TASK, WEBHOOKS_QUEUE

log = logging.getLogger(__name__)

# How many of the oldest messages to look through for one that names an inbox row (an
# ingest message, stored by the receiver while PostgreSQL was down, names none).
_LOOK_AT = 20


def oldest_waiting_inbox_id(broker_url: str, queue: str = WEBHOOKS_QUEUE) -> int | None:
    """The inbox id of the oldest `webhooks.process` message waiting in `queue`, or None (the
    queue holds none, or the broker could not be read: the sweeper then sweeps without it)."""
    try:
        with redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2) as client:
            oldest_first = list(reversed(client.lrange(queue, -_LOOK_AT, -1)))
    except (RedisError, OSError) as exc:
        log.warning("inbox.sweep could not read the %s queue: %s", queue, type(exc).__name__)
        return None
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
