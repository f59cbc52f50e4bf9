"""The fallback store: a Redis Stream that keeps each delivery the receiver queued (PostgreSQL was
down) until a worker has committed it to the inbox. An entry is removed (XACK and XDEL in one
MULTI) only by `done`, never trimmed, never given an expiry. Read through the consumer group
DRAIN_GROUP: an entry a reader took stays pending until `done`, and a reader that died leaves it
to be reclaimed (XAUTOCLAIM) by the next one once it has been idle long enough.
Plain redis-py calls; what an entry holds (signed) is messaging/ingest_message.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ResponseError

STREAM = "pedro:fallback:deliveries"
DRAIN_GROUP = "drain"
# Set (NX, with an expiry) when the receiver nudges the workers to drain: at most one nudge per
# its lifetime, however many deliveries an outage queues.
NUDGE_KEY = "pedro:fallback:nudged"


@dataclass(frozen=True)
class Entry:
    entry_id: str
    fields: dict[str, str] | None  # None: the entry was deleted while pending (nothing to store)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: Any) -> list[Entry]:
    """redis-py's [(id, {field: value} or None)] as entries (a reply is typed `Any` by redis-py)."""
    return [
        Entry(_text(entry_id), None if fields is None else {_text(k): _text(v) for k, v in fields.items()})
        for entry_id, fields in raw
    ]


class FallbackStore:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def add(self, fields: dict[str, str], nudge_seconds: float) -> bool:
        """Append one entry (no MAXLEN: nothing is ever trimmed away), in one round trip with
        the nudge flag. True when this call set the flag: the caller should nudge a drain."""
        pipeline = self._client.pipeline(transaction=False)
        pipeline.xadd(STREAM, fields)  # type: ignore[arg-type]  # redis-py's stubs want a broader dict
        pipeline.set(NUDGE_KEY, "1", nx=True, px=max(int(nudge_seconds * 1000), 1))
        _, nudged = pipeline.execute()
        return bool(nudged)

    def ensure_group(self) -> None:
        """The group reads from the stream's very start (id 0): entries added before it existed
        are read too."""
        try:
            self._client.xgroup_create(STREAM, DRAIN_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def take(self, consumer: str, count: int, claim_idle_seconds: float) -> list[Entry]:
        """Up to `count` entries for `consumer`: first those it took before and still holds, then
        those other readers left pending for `claim_idle_seconds` (reclaimed), then new ones."""
        found = self._own_pending(consumer, count)
        if len(found) < count:
            found += self._reclaim(consumer, count - len(found), claim_idle_seconds)
        if len(found) < count:
            found += self._new(consumer, count - len(found))
        return found

    def _own_pending(self, consumer: str, count: int) -> list[Entry]:
        replies: Any = self._client.xreadgroup(DRAIN_GROUP, consumer, {STREAM: "0"}, count=count)
        return [entry for _, raw in replies for entry in _entries(raw)]

    def _reclaim(self, consumer: str, count: int, idle_seconds: float) -> list[Entry]:
        idle_ms = int(idle_seconds * 1000)
        reply: Any = self._client.xautoclaim(STREAM, DRAIN_GROUP, consumer, idle_ms, start_id="0-0", count=count)
        # [next start, claimed entries, ids deleted meanwhile (Redis >= 7)]
        return _entries(reply[1])

    def _new(self, consumer: str, count: int) -> list[Entry]:
        replies: Any = self._client.xreadgroup(DRAIN_GROUP, consumer, {STREAM: ">"}, count=count)
        return [entry for _, raw in replies for entry in _entries(raw)]

    def done(self, entry_id: str) -> None:
        """Acknowledge and delete the entry, atomically: the delivery is in PostgreSQL."""
        pipeline = self._client.pipeline(transaction=True)
        pipeline.xack(STREAM, DRAIN_GROUP, entry_id)
        pipeline.xdel(STREAM, entry_id)
        pipeline.execute()

    def length(self) -> int:
        return int(self._client.xlen(STREAM))

    def oldest_age_seconds(self) -> float | None:
        """How long the oldest entry has waited (by Redis's clock: an entry id is the server's
        time in ms when it was added), or None when the store is empty."""
        oldest: Any = self._client.xrange(STREAM, count=1)
        if not oldest:
            return None
        clock: Any = self._client.time()
        seconds, micros = clock
        added_ms = int(_text(oldest[0][0]).split("-")[0])
        return max(seconds + micros / 1e6 - added_ms / 1000, 0.0)
