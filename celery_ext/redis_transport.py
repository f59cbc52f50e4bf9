"""kombu's Redis transport as data: a task message as it lies in a queue's list, written and read.

- `TaskMessageWriter`: the message Celery's `send_task` would publish, in one LPUSH (the receiver's
  `webhooks.process`); tests/celery_ext/test_redis_transport.py holds it to `send_task` field by field.
- `task_of_message`: the task name and kwargs of a queued message (the sweeper's queue probe).
- `queue_lists`: the Redis lists that hold one queue's messages, one per priority step.
- `held_messages`: the messages workers took and have not acked yet, delivered since a time.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

# kombu's Redis transport: the body in base64, priority 0 goes to the list named as the queue.
_BODY_ENCODING = "base64"
_PRIORITY = 0
_PERSISTENT = 2  # kombu's delivery_mode for a direct exchange's messages (Celery's default)
_PLACEHOLDER_ID = "00000000-0000-0000-0000-000000000000"
# What kombu's `json` serializer declares for the body it writes.
_CONTENT_TYPE, _CONTENT_ENCODING = "application/json", "utf-8"


@dataclass(frozen=True)
class _Template:
    headers: dict[str, Any]
    properties: dict[str, Any]
    embed: dict[str, Any]  # the body's third part: callbacks, errbacks, chain, chord


class TaskMessageWriter:
    """Celery builds the message once per task name (`app.amqp.create_task_message`, protocol 2);
    each send fills in its id and kwargs, encodes the body as kombu's `json` serializer and Redis
    transport do (JSON, then base64 in an envelope with `delivery_info` and a `delivery_tag`), and
    LPUSHes it onto the queue's list at priority 0. One redis-py client per writer, trying a
    command once more at once on a lost connection. Why not `send_task`: docs/design.md."""

    def __init__(self, app: Celery, redis_url: str, socket_timeout: float) -> None:
        self._app = app
        self._queues: dict[str, str] = {}
        self._templates: dict[str, _Template] = {}
        self._client = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=socket_timeout,
            socket_timeout=socket_timeout,
            # One more try at once on a lost connection (a Redis restart closes idle ones);
            # then the error reaches the caller, which answers without waiting any longer.
            retry=Retry(NoBackoff(), 1),
        )

    def send(self, task_name: str, kwargs: dict[str, Any]) -> str:
        """LPUSH `task_name(**kwargs)` onto its queue, result ignored; returns the task id.
        Raises redis-py's errors (RedisError, OSError) when Redis cannot take it."""
        queue = self.queue_of(task_name)
        task_id, message = self.message(task_name, queue, kwargs)
        self._client.lpush(queue, message)
        return task_id

    def queue_of(self, task_name: str) -> str:
        """The queue Celery's router sends `task_name` to (TASK_ROUTES), asked once per name."""
        if task_name not in self._queues:
            self._queues[task_name] = str(self._app.amqp.router.route({}, task_name)["queue"].name)
        return self._queues[task_name]

    def message(self, task_name: str, queue: str, kwargs: dict[str, Any]) -> tuple[str, str]:
        """The task's id and its message, as kombu's Redis transport stores it in the list."""
        task_id = str(uuid.uuid4())
        # The options the receiver always sends: no result (nobody waits for one, and the Redis
        # backend would otherwise subscribe this process to a channel per task), and a repr
        # built here (Celery's safe repr is slow, for a dict of one int).
        kwargsrepr = repr(kwargs)
        template = self._template(task_name, queue)
        headers = {**template.headers, "id": task_id, "root_id": task_id, "kwargsrepr": kwargsrepr}
        body = json.dumps(((), kwargs, template.embed)).encode()
        return task_id, json.dumps(
            {
                "body": base64.b64encode(body).decode(),
                "content-encoding": _CONTENT_ENCODING,
                "content-type": _CONTENT_TYPE,
                "headers": headers,
                "properties": {
                    **template.properties,
                    "correlation_id": task_id,
                    "kwargsrepr": kwargsrepr,
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )

    def _template(self, task_name: str, queue: str) -> _Template:
        """What every message of `task_name` shares, as Celery builds it, made once per name.

        Celery's `create_task_message` was a third of the receiver's cost of a message, and for
        this one task sent with the same options its output differs only in the task id (`id`,
        `root_id`, `correlation_id`), the kwargs and their repr: those are filled in per message.
        """
        if task_name not in self._templates:
            headers, properties, body, _ = self._app.amqp.create_task_message(
                _PLACEHOLDER_ID,
                task_name,
                (),
                {},
                ignore_result=True,
                argsrepr="()",
                kwargsrepr="{}",
                reply_to=self._app.thread_oid,
            )
            self._templates[task_name] = _Template(
                headers=headers,
                properties={
                    **properties,
                    # `send_task` passes its options on as message properties too.
                    "argsrepr": "()",
                    "delivery_mode": _PERSISTENT,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": _PRIORITY,
                    "body_encoding": _BODY_ENCODING,
                },
                embed=body[2],
            )
        return self._templates[task_name]

    def close(self) -> None:
        self._client.close()


def task_of_message(raw: bytes | str) -> tuple[str, dict[str, Any]] | None:
    """The task name and kwargs of a message as it lies in a queue's list (protocol 2, JSON
    body), or None for anything else."""
    try:
        envelope: dict[str, Any] = json.loads(raw)
    except ValueError:
        return None
    return _task_of_envelope(envelope)


def _task_of_envelope(envelope: Any) -> tuple[str, dict[str, Any]] | None:
    try:
        task = envelope["headers"]["task"]
        _args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(task, str) or not isinstance(kwargs, dict):
        return None
    return task, kwargs


# kombu.transport.redis: a message a consumer took (BRPOP) without acking it yet waits in the hash
# `unacked` (delivery tag -> [envelope, exchange, routing key]) and the sorted set `unacked_index`
# (delivery tag -> when it was taken), until acked, or restored to its list after
# `visibility_timeout` (or when its worker shuts down warm).
_UNACKED, _UNACKED_INDEX = "unacked", "unacked_index"
_HELD_LOOK_AT = 1000  # a few workers' prefetch windows


def held_messages(client: redis.Redis, since: float) -> list[tuple[str, dict[str, Any]]]:
    """The task name and kwargs of each message a worker took at or after `since` (Unix time)
    and has not acked yet, earliest taken first: a live worker's reserved and running messages
    (and a dead worker's, until they are older than `since`)."""
    tags: list[bytes] = list(client.zrangebyscore(_UNACKED_INDEX, since, "+inf", start=0, num=_HELD_LOOK_AT))  # type: ignore[arg-type]
    if not tags:
        return []
    held = []
    for raw in client.hmget(_UNACKED, tags):
        try:
            envelope = json.loads(raw)[0] if raw is not None else None
        except (ValueError, IndexError, KeyError, TypeError):
            continue
        task = _task_of_envelope(envelope)
        if task is not None:
            held.append(task)
    return held


# kombu.transport.redis: PRIORITY_STEPS and the separator of a priority queue's list name.
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEPARATOR = "\x06\x16"


def queue_lists(queue: str) -> list[str]:
    """The lists holding `queue`'s messages: the queue's own name (priority 0), then one per
    further priority step, as kombu names them."""
    return [queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]
