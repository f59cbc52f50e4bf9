"""Messages workers hold (delivered, not yet acked), read from kombu's Redis transport.

- `held_messages`: kombu's `unacked` hash, where a message stays from its delivery to a worker
  (prefetched, waiting for its ETA, or running: acks late) until its ack.
- `live_holder_tags`: the delivery tags that live workers report holding (`HolderReport`, a
  consumer step writing them every REPORT_INTERVAL with a server-side expiry). kombu does not
  record who holds a message, and after a SIGKILL it leaves the message in `unacked` until the
  visibility timeout: a held message is "still queued" only while a live worker holds it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from celery import bootsteps

from celery_ext.redis_transport import task_of_envelope

# kombu.transport.redis.Channel: unacked_key and unacked_index_key (delivery tag -> delivery time).
_UNACKED, _UNACKED_INDEX = "unacked", "unacked_index"
# The holders' reports: one key per worker (expiring), and the set naming them.
_HOLDERS = "pedro-webhooks:holders"
_HOLDER_PREFIX = "pedro-webhooks:holder:"
REPORT_INTERVAL = 2.0
# A report outlives a few missed writes; a worker dead this long no longer holds anything. A
# message delivered this recently counts as held even before its holder's next report.
REPORT_TTL = 10


@dataclass(frozen=True)
class HeldMessage:
    delivery_tag: str
    task: str
    kwargs: dict[str, Any]
    delivered_at: float  # the holder's clock (kombu's unacked_index score)


def held_messages(client: redis.Redis, task_name: str) -> list[HeldMessage]:
    """Every `task_name` message in kombu's `unacked` hash (each value JSON
    [message, exchange, routing_key]; the message is the envelope a queue's list holds)."""
    raw_by_tag: dict[bytes, bytes] = client.hgetall(_UNACKED)  # type: ignore[assignment]
    needle = task_name.encode()
    # Debits held by the usage worker share the hash: skip them before decoding anything.
    wanted = {tag: raw for tag, raw in raw_by_tag.items() if needle in raw}
    scores = client.zmscore(_UNACKED_INDEX, [tag.decode() for tag in wanted]) if wanted else []
    held = []
    for (tag, raw), score in zip(wanted.items(), scores, strict=True):
        task = _task_of_unacked(raw)
        if task is not None and task[0] == task_name:
            held.append(HeldMessage(tag.decode(), task[0], task[1], score or 0.0))
    return held


def _task_of_unacked(raw: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        envelope, _exchange, _routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return task_of_envelope(envelope) if isinstance(envelope, dict) else None


def live_holder_tags(client: redis.Redis) -> set[str]:
    """The delivery tags live workers reported holding (a report expires REPORT_TTL after its
    write, so a killed worker's tags drop out); names whose report expired are forgotten."""
    names = sorted(name.decode() for name in client.smembers(_HOLDERS))  # type: ignore[union-attr]
    if not names:
        return set()
    reports = client.mget([_HOLDER_PREFIX + name for name in names])
    gone = [name for name, report in zip(names, reports, strict=True) if report is None]
    if gone:
        client.srem(_HOLDERS, *gone)
    return {tag for report in reports if report is not None for tag in json.loads(report)}


def is_held(message: HeldMessage, live_tags: set[str], now: float | None = None) -> bool:
    """Held by a live worker: reported, or delivered too recently for its holder to have reported."""
    now = time.time() if now is None else now
    return message.delivery_tag in live_tags or message.delivered_at > now - REPORT_TTL


def write_holder_report(client: redis.Redis, name: str, tags: Iterable[str]) -> None:
    """One worker's report: the tags it holds now, expiring REPORT_TTL from now (Redis's clock)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.set(_HOLDER_PREFIX + name, json.dumps(sorted(tags)), ex=REPORT_TTL)
        pipe.sadd(_HOLDERS, name)
        pipe.execute()


class HolderReport(bootsteps.StartStopStep):
    """A consumer step: every REPORT_INTERVAL the worker's main process reports the delivery tags
    of `task_names` messages its channel holds (kombu's QoS `_delivered`, less the acked ones not
    yet flushed). Made for a worker by `holder_report_step`."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    task_names: frozenset[str] = frozenset()

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None
        self._client: redis.Redis | None = None
        self._name = str(getattr(parent, "hostname", None) or socket.gethostname())

    def start(self, parent: Any) -> None:
        self._client = redis.Redis.from_url(parent.app.conf.broker_url, socket_timeout=2, socket_connect_timeout=2)
        self._report(parent)
        self._timer = parent.timer.call_repeatedly(REPORT_INTERVAL, self._report, (parent,))

    def stop(self, parent: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _report(self, parent: Any) -> None:
        if self._client is None:
            return
        # A failed write: the next report tries again; meanwhile the sweeper may re-enqueue (harmless).
        with contextlib.suppress(redis.RedisError, OSError):
            write_holder_report(self._client, self._name, held_tags(parent, self.task_names))


def held_tags(consumer: Any, task_names: frozenset[str]) -> list[str]:
    """The delivery tags of the `task_names` messages the consumer's channel holds unacked."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return []
    qos = task_consumer.channel.qos
    delivered, dirty = qos._delivered, qos._dirty
    return [
        str(tag)
        for tag, message in list(delivered.items())
        if tag not in dirty and message.headers.get("task") in task_names
    ]


def holder_report_step(*task_names: str) -> type[HolderReport]:
    """The consumer step to add (`app.steps["consumer"].add(...)`) for these tasks' messages."""
    return type("HolderReport", (HolderReport,), {"task_names": frozenset(task_names)})
