"""The `SubscriptionEvent` log: one row per delivered billing event, however often it is processed.

The row's id is derived from the inbox row's identity (source and provider event id), so
processing the same delivery again (a redelivered message, a replay) meets the row it wrote
before instead of adding one. A later run only fills in `userId` once the user exists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import SubscriptionEvent
from models.base import utcnow
from models.ids import base36
from worker.billing.provider_times import naive_utc
from worker.registry import Delivery

_ID_LENGTH = 25  # cuid-shaped, like every other Prisma id in the table


@dataclass(frozen=True)
class BillingEvent:
    clerk_user_id: str
    plan_key: str | None
    status: str
    event_type: str
    occurred_at: datetime  # naive UTC: the provider's time, else `received_time`
    metadata: dict[str, Any]


def received_time(delivery: Delivery) -> datetime:
    """When the delivery was received, as naive UTC (ms): the time of an event whose provider
    time is missing, malformed or out of range."""
    return naive_utc(delivery.received_at)


def subscription_event_id(delivery: Delivery) -> str:
    """'c' + 24 base36 digits of a hash of (source, provider event id): stable across runs."""
    digest = hashlib.sha256(f"{delivery.source}\x00{delivery.external_id}".encode()).digest()
    return "c" + base36(int.from_bytes(digest, "big"), _ID_LENGTH - 1)


def log_subscription_event(session: Session, delivery: Delivery, event: BillingEvent, user_id: str | None) -> None:
    now = utcnow()
    statement = insert(SubscriptionEvent).values(
        id=subscription_event_id(delivery),
        user_id=user_id,
        clerk_user_id=event.clerk_user_id,
        plan_key=event.plan_key,
        status=event.status,
        event_type=event.event_type,
        occurred_at=event.occurred_at,
        metadata_=event.metadata,
        created_at=now,
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[SubscriptionEvent.id],
            set_={"userId": func.coalesce(SubscriptionEvent.user_id, statement.excluded.userId)},
        )
    )
