"""`pedro-webhooks status`: the first thing to look at when on call, gathered as plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from models import migrate
from models.inbox import InboxStatus
from ops.queries.inbox_rows import StatusCount, counts_by_status


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
