"""Is the broker a durable place for a delivery? Only then may the PostgreSQL-down fallback answer
200 (a provider that gets 200 never sends the delivery again).

Redis keeps a queued delivery across a crash only with its append-only file fsynced before it
answers each write (`appendonly yes`, `appendfsync always`: `everysec` may lose the last second
of deliveries already answered 200), and keeps it at all under memory pressure only when it never
evicts keys (`maxmemory-policy noeviction`). RDB snapshots alone are not durable. Read with
CONFIG GET at start-up, on every /readyz and before each fallback. A managed Redis may refuse
CONFIG: then the fallback answers 503, unless the operator vouches for the server's persistence
with REDIS_DURABLE=yes (REDIS_DURABLE=no: never queue).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from redis.exceptions import RedisError, ResponseError

from models.settings import Settings

log = logging.getLogger(__name__)

# How the append-only file must be fsynced: before Redis answers the write. "everysec" loses up to
# a second of writes in a crash; "no" leaves it to the kernel (~30 s of writes).
_SAFE_FSYNC = ("always",)
_SETTINGS = ("appendonly", "appendfsync", "save", "maxmemory-policy")


@dataclass(frozen=True)
class Durability:
    durable: bool
    reason: str  # why, for the log (never secret: Redis settings, not data)


class RedisDurability:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self._override = settings.redis_durable
        self._client = client
        self._last: Durability | None = None

    def check(self) -> Durability:
        """Read the server's settings now; log when the answer differs from the last one."""
        reading = self._read()
        if reading != self._last:
            level = logging.INFO if reading.durable else logging.WARNING
            log.log(level, "redis.durability durable=%s reason=%s", "yes" if reading.durable else "no", reading.reason)
            self._last = reading
        return reading

    def _read(self) -> Durability:
        if self._override == "yes":
            return Durability(True, "REDIS_DURABLE=yes: the operator vouches for the broker's persistence")
        if self._override == "no":
            return Durability(False, "REDIS_DURABLE=no: deliveries are never queued in Redis")
        try:
            pipeline = self._client.pipeline(transaction=False)
            for name in _SETTINGS:
                pipeline.config_get(name)
            values: dict[str, str] = {}
            for found in pipeline.execute():
                values.update({_text(key): _text(value) for key, value in found.items()})
        except ResponseError:
            return Durability(
                False, "Redis refused CONFIG GET (a managed Redis?): set REDIS_DURABLE=yes if it persists its data"
            )
        except RedisError as exc:
            return Durability(False, f"Redis is unreachable ({type(exc).__name__})")
        return _judge(values)


def _judge(values: dict[str, str]) -> Durability:
    problems = []
    if values.get("appendonly") != "yes":
        snapshots = values.get("save") or ""
        problems.append(
            f"appendonly is {values.get('appendonly', 'unknown')}"
            + (f" (RDB snapshots only, save '{snapshots}')" if snapshots else " and nothing is saved")
        )
    elif values.get("appendfsync") not in _SAFE_FSYNC:
        problems.append(f"appendfsync is {values.get('appendfsync', 'unknown')} (always needed)")
    if values.get("maxmemory-policy") != "noeviction":
        problems.append(f"maxmemory-policy is {values.get('maxmemory-policy', 'unknown')}: it may evict messages")
    if problems:
        return Durability(False, "; ".join(problems))
    return Durability(True, f"appendonly yes, appendfsync {values['appendfsync']}, maxmemory-policy noeviction")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
