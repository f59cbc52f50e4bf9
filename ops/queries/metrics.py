"""Gauges for alerts, read from PostgreSQL and Redis when Prometheus scrapes.

Served by a process of its own (`pedro-webhooks metrics`, the Procfile's `metrics`), bound to
127.0.0.1 by default: never by the public webhook port. Nothing is counted in memory, so any
number of exporters (or a restarted one) report the same values. When a server cannot be read
during a scrape its `*_up` gauge is 0 and its gauges are left out: the scrape itself succeeds.
The gauges and sample alert rules: docs/operating.md ("Alerts").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, make_server
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from messaging.celery_config import REFUSED_USAGE_MESSAGES
from models.inbox import InboxStatus, Source
from models.usage import CreditHold, HoldState, UsageRequest
from ops.queries.inbox_rows import StatusCount, counts_by_status
from ops.queries.queues import FallbackBacklog, fallback_backlog, queue_lengths

log = logging.getLogger(__name__)

PREFIX = "pedro_webhooks"
# The statuses whose oldest row's age an alert watches: each means something waits.
AGED_STATUSES = (InboxStatus.PENDING, InboxStatus.UNMATCHED, InboxStatus.NEEDS_ATTENTION, InboxStatus.FAILED)


class OpsCollector(Collector):
    def __init__(self, engine: Engine, redis_client: redis.Redis, queues: list[str]) -> None:
        self._engine = engine
        self._redis = redis_client
        self._queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._database_gauges()
        yield from self._queue_gauges()

    def _database_gauges(self) -> Iterator[GaugeMetricFamily]:
        try:
            with Session(self._engine) as session, session.begin():
                families = [
                    *inbox_gauges(counts_by_status(session), datetime.now(UTC)),
                    _usage_gauge(session),
                    *hold_gauges(open_holds_summary(session), datetime.now(UTC)),
                ]
        except (DBAPIError, PoolTimeoutError) as exc:
            log.warning("metrics.database_unreachable error=%s", type(exc).__name__)
            yield up_gauge("database", False)
            return
        yield up_gauge("database", True)
        yield from families

    def _queue_gauges(self) -> Iterator[GaugeMetricFamily]:
        try:
            lengths = queue_lengths(self._redis, self._queues)
            refused = self._redis.hgetall(REFUSED_USAGE_MESSAGES)
            fallback = fallback_backlog(self._redis)
        except RedisError as exc:
            log.warning("metrics.redis_unreachable error=%s", type(exc).__name__)
            yield up_gauge("redis", False)
            return
        yield up_gauge("redis", True)
        yield queue_gauge(lengths)
        yield refused_gauge(refused)
        yield from fallback_gauges(fallback)


_UP_HELP = {
    "database": "1 when this scrape could read PostgreSQL.",
    "redis": "1 when this scrape could read the Redis broker.",
}


def up_gauge(server: str, up: bool) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(f"{PREFIX}_{server}_up", _UP_HELP[server])
    gauge.add_metric([], 1 if up else 0)
    return gauge


def queue_gauge(lengths: dict[str, int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(f"{PREFIX}_queue_length", "Messages waiting in a Celery queue.", labels=["queue"])
    for name, length in lengths.items():
        gauge.add_metric([name], length)
    return gauge


def fallback_gauges(backlog: FallbackBacklog) -> list[GaugeMetricFamily]:
    """The deliveries waiting in the fallback store (PostgreSQL was down) and the oldest's age
    (0 when none waits)."""
    entries = GaugeMetricFamily(
        f"{PREFIX}_fallback_entries", "Deliveries answered 200 that wait in the fallback store for PostgreSQL."
    )
    entries.add_metric([], backlog.entries)
    age = GaugeMetricFamily(
        f"{PREFIX}_fallback_oldest_age_seconds", "Age of the oldest delivery waiting in the fallback store."
    )
    age.add_metric([], backlog.oldest_age_seconds or 0.0)
    return [entries, age]


def inbox_gauges(counts: list[StatusCount], now: datetime) -> list[GaugeMetricFamily]:
    """The inbox's gauges from `counts_by_status` (the console's overview reads them too)."""
    rows = GaugeMetricFamily(
        f"{PREFIX}_inbox_rows", "Webhook inbox rows by source and status.", labels=["source", "status"]
    )
    ages = GaugeMetricFamily(
        f"{PREFIX}_inbox_oldest_age_seconds",
        "Age of the oldest inbox row of a status that waits (pending, unmatched, needs_attention, failed).",
        labels=["source", "status"],
    )
    by_key = {(count.source, count.status): count for count in counts}
    for source in Source:
        for status in InboxStatus:
            count = by_key.get((source.value, status.value))
            rows.add_metric([source.value, status.value], count.count if count else 0)
            if status in AGED_STATUSES:
                oldest = count.oldest_received_at if count else None
                ages.add_metric([source.value, status.value], (now - oldest).total_seconds() if oldest else 0)
    return [rows, ages]


def _usage_gauge(session: Session) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(
        f"{PREFIX}_usage_requests",
        "Usage debits and refunds by kind and outcome status (every key ever answered).",
        labels=["kind", "status"],
    )
    statement = select(UsageRequest.kind, UsageRequest.status, func.count()).group_by(
        UsageRequest.kind, UsageRequest.status
    )
    for kind, status, count in session.execute(statement.order_by(UsageRequest.kind, UsageRequest.status)).all():
        gauge.add_metric([kind, status], count)
    return gauge


@dataclass(frozen=True)
class OpenHolds:
    count: int
    credits: int
    oldest_created_at: datetime | None
    overdue: int


def open_holds_summary(session: Session) -> OpenHolds:
    """The credit holds still open: how many, the credits they hold, the oldest, and how many are
    past their `expires_at` (more than a few means `holds.expire` is not running)."""
    count, held, oldest, overdue = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(CreditHold.credits), 0),
            func.min(CreditHold.created_at),
            func.count().filter(CreditHold.expires_at < func.clock_timestamp()),
        ).where(CreditHold.state == HoldState.OPEN.value)
    ).one()
    return OpenHolds(count, held, oldest, overdue)


def hold_gauges(holds: OpenHolds, now: datetime) -> list[GaugeMetricFamily]:
    age = (now - holds.oldest_created_at).total_seconds() if holds.oldest_created_at else 0
    gauges = []
    for name, text_, value in (
        ("open_holds", "Credit holds not captured, released or expired yet.", holds.count),
        ("held_credits", "Credits the open holds keep out of the balances.", holds.credits),
        ("open_hold_oldest_age_seconds", "Age of the oldest open credit hold (0 when none).", age),
        ("overdue_holds", "Open credit holds past their expires_at (holds.expire releases them).", holds.overdue),
    ):
        gauge = GaugeMetricFamily(f"{PREFIX}_{name}", text_)
        gauge.add_metric([], value)
        gauges.append(gauge)
    return gauges


def make_registry(engine: Engine, redis_client: redis.Redis, queues: list[str]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OpsCollector(engine, redis_client, queues))
    return registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log: a line per scrape says nothing."""


def make_exporter(registry: CollectorRegistry, address: str, port: int) -> WSGIServer:
    """An HTTP server answering /metrics (any path) from `registry`; call serve_forever()."""
    return make_server(address, port, make_wsgi_app(registry), ThreadingWSGIServer, handler_class=_QuietHandler)


def refused_gauge(counts: dict[Any, Any]) -> GaugeMetricFamily:
    """Usage messages the workers refused (their signature did not verify), by the service they
    named, since Redis last started empty: anything above 0 is someone writing to the broker."""
    gauge = GaugeMetricFamily(
        f"{PREFIX}_refused_usage_messages", "Usage messages refused: the signature did not verify.", labels=["service"]
    )
    for service, count in sorted(counts.items()):
        gauge.add_metric([service.decode(errors="replace") if isinstance(service, bytes) else service], int(count))
    return gauge
