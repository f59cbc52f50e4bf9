"""Readiness: can this process store a delivery (PostgreSQL) and enqueue it (Redis) right now?"""

from __future__ import annotations

import logging

import redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from models.db import once_more_if_disconnected
from models.settings import Settings
from receiver.ingest import BROKER_SOCKET_TIMEOUT

log = logging.getLogger(__name__)


def probe_client(settings: Settings) -> redis.Redis:
    """A Redis client for probes, with short timeouts: a probe must answer before the
    orchestrator's probe timeout (and a delivery before the provider's), even when Redis hangs
    rather than refuses."""
    return redis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_connect_timeout=BROKER_SOCKET_TIMEOUT,
        socket_timeout=BROKER_SOCKET_TIMEOUT,
    )


class Readiness:
    def __init__(self, engine: Engine, client: redis.Redis) -> None:
        self._engine = engine
        self._redis = client

    def check(self) -> dict[str, str]:
        return {"postgresql": self._postgresql(), "redis": self._redis_ping()}

    def _postgresql(self) -> str:
        try:
            for attempt in once_more_if_disconnected():  # the pool does not pre-ping (receiver/app.py)
                with attempt, self._engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
        except (DBAPIError, PoolTimeoutError) as exc:
            log.warning("readyz.postgresql_unreachable error=%s", type(exc).__name__)
            return "unreachable"
        return "ok"

    def _redis_ping(self) -> str:
        try:
            self._redis.ping()
        except RedisError as exc:
            log.warning("readyz.redis_unreachable error=%s", type(exc).__name__)
            return "unreachable"
        return "ok"

    def close(self) -> None:
        self._redis.close()
