"""`pedro-webhooks status`: the first thing to look at when on call, gathered as plain data."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy.orm import Session

from models import migrate
from models.connectivity import ServerUnreachable, check_redis, masked_url
from models.inbox import InboxStatus
from models.settings import ConfigError
from ops.queries.inbox_rows import StatusCount, counts_by_status
from ops.queries.queues import FallbackBacklog, fallback_backlog, queue_lengths

DEFAULT_RECEIVER_URL = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class Server:
    name: str  # PostgreSQL, Redis
    variable: str  # where its URL came from
    url: str | None  # password masked
    state: str  # ok | unreachable: <why> | not set


@dataclass(frozen=True)
class Migration:
    database: str | None
    head: str | None

    @property
    def up_to_date(self) -> bool:
        return self.database == self.head


@dataclass
class Status:
    servers: list[Server]
    endpoints: dict[str, str]
    migration: Migration
    queues: dict[str, int] | None  # None: Redis not reachable or not configured
    inbox: list[StatusCount]
    fallback: FallbackBacklog | None = None  # None: Redis not reachable or not configured
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def oldest_pending_age_seconds(self) -> dict[str, float]:
        """Per source, how long the oldest pending row has waited."""
        return {
            count.source: (self.now - count.oldest_received_at).total_seconds()
            for count in self.inbox
            if count.status == InboxStatus.PENDING and count.oldest_received_at is not None
        }

    def inbox_totals(self) -> dict[str, int]:
        """Every status, zeros included, summed over the sources."""
        totals = {status.value: 0 for status in InboxStatus}
        for count in self.inbox:
            totals[count.status] = totals.get(count.status, 0) + count.count
        return totals

    def as_json(self) -> dict[str, Any]:
        return {
            "servers": [asdict(server) for server in self.servers],
            "endpoints": self.endpoints,
            "migration": {**asdict(self.migration), "up_to_date": self.migration.up_to_date},
            "queues": self.queues,
            "fallback_store": None if self.fallback is None else asdict(self.fallback),
            "inbox": {
                "by_status": self.inbox_totals(),
                "by_source": [{"source": c.source, "status": c.status, "count": c.count} for c in self.inbox],
                "oldest_pending_age_seconds": self.oldest_pending_age_seconds(),
            },
        }


def migration_state(session: Session, service_schema: str) -> Migration:
    return Migration(migrate.database_revision(session.connection(), service_schema), migrate.head_revision())


def inbox_counts(session: Session) -> list[StatusCount]:
    return counts_by_status(session)


def redis_state(
    url: str | None, origin: str, queue_names: Callable[[], list[str]]
) -> tuple[Server, dict[str, int] | None]:
    """Redis as `status` shows it, and the queue lengths (None when it cannot be read). The
    fallback store's backlog is `fallback_state`'s (read only once this answered "ok")."""
    if not url:
        return Server("Redis", origin, None, "not set"), None
    try:
        check_redis(url, origin)
        names = queue_names()
    except ServerUnreachable as exc:
        return Server("Redis", origin, masked_url(url), f"unreachable: {exc.reason}"), None
    except ConfigError as exc:
        return Server("Redis", origin, None, str(exc)), None
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return Server("Redis", origin, masked_url(url), "ok"), queue_lengths(client, names)
    finally:
        client.close()


def fallback_state(url: str) -> FallbackBacklog | None:
    """The deliveries waiting in the fallback store, or None when Redis cannot be read."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return fallback_backlog(client)
    except redis.RedisError:
        return None
    finally:
        client.close()


def endpoints() -> dict[str, str]:
    """Where the processes listen (what `run` wrote in .local/run.env, else the defaults)."""

    def at(address: str, port: str, default_port: int) -> str:
        return f"http://{os.environ.get(address, '127.0.0.1')}:{os.environ.get(port, str(default_port))}"

    return {
        "receiver": os.environ.get("RECEIVER_URL", DEFAULT_RECEIVER_URL),
        "flower": os.environ.get("FLOWER_URL", at("FLOWER_ADDRESS", "FLOWER_PORT", 5555)),
        "metrics": os.environ.get("OPS_METRICS_URL", at("OPS_METRICS_ADDRESS", "OPS_METRICS_PORT", 9808) + "/metrics"),
        "console": os.environ.get("CONSOLE_URL", at("CONSOLE_ADDRESS", "CONSOLE_PORT", 5556)),
    }


def status_report(
    session: Session,
    service_schema: str,
    servers: list[Server],
    queues: dict[str, int] | None,
    fallback: FallbackBacklog | None = None,
) -> Status:
    """Everything `status` shows, PostgreSQL answering (the session)."""
    migration = migration_state(session, service_schema)
    return Status(
        servers=servers,
        endpoints=endpoints(),
        migration=migration,
        queues=queues,
        fallback=fallback,
        # A database never migrated has no inbox to count.
        inbox=inbox_counts(session) if migration.database is not None else [],
    )
