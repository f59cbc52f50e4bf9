"""What the broker still has for the sweeper: the oldest `webhooks.process` message waiting in the
queue, and the inbox rows whose message a live worker holds (prefetched, waiting for its ETA).

Kombu keeps a queue as a list (producers LPUSH, consumers BRPOP: the oldest at the tail) and a
delivered message in its `unacked` hash until the ack. A pending row enqueued before the oldest
waiting message and held by no live worker has lost its message (Redis lost it, its worker died).
If the broker cannot be read the view is empty: the sweeper then sweeps without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import RedisError

from celery_ext.held_messages import held_messages, is_held, live_holder_tags
from celery_ext.redis_transport import task_of_message
from messaging.celery_config import PROCESS_WEBHOOK_TASK, WEBHOOKS_QUEUE

log = logging.getLogger(__name__)

# How many of the oldest messages to look through for one that names an inbox row (an
# ingest message, stored by the receiver while PostgreSQL was down, names none).
_LOOK_AT = 20


@dataclass(frozen=True)
class BrokerView:
    oldest_waiting_id: int | None = None  # the row of the oldest message waiting in the queue
    held_ids: frozenset[int] = field(default_factory=frozenset)  # rows whose message a live worker holds


def broker_view(broker_url: str, queue: str = WEBHOOKS_QUEUE) -> BrokerView:
    """The queue's oldest waiting `webhooks.process` row and the rows held by live workers."""
    try:
        with redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2) as client:
            oldest_first = list(reversed(client.lrange(queue, -_LOOK_AT, -1)))
            # Tags first: a message acked and re-delivered between the reads is then at worst
            # seen as not held (a harmless extra sweep), never a dead holder's as held.
            live = live_holder_tags(client)
            held = held_messages(client, PROCESS_WEBHOOK_TASK)
    except (RedisError, OSError) as exc:
        log.warning("inbox.sweep could not read the %s queue: %s", queue, type(exc).__name__)
        return BrokerView()
    held_ids = {_inbox_id(message.kwargs) for message in held if is_held(message, live)}
    return BrokerView(_oldest_inbox_id(oldest_first), frozenset(i for i in held_ids if i is not None))


def oldest_waiting_inbox_id(broker_url: str, queue: str = WEBHOOKS_QUEUE) -> int | None:
    """The inbox id of the oldest `webhooks.process` message waiting in `queue`, or None."""
    return broker_view(broker_url, queue).oldest_waiting_id


def _oldest_inbox_id(oldest_first: list[Any]) -> int | None:
    for raw in oldest_first:
        task = task_of_message(raw)
        if task is not None and task[0] == PROCESS_WEBHOOK_TASK:
            inbox_id = _inbox_id(task[1])
            if inbox_id is not None:
                return inbox_id
    return None


def _inbox_id(kwargs: dict[str, Any]) -> int | None:
    inbox_id = kwargs.get("inbox_id")
    return inbox_id if isinstance(inbox_id, int) else None
