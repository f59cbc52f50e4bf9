"""A billing event whose provider time is missing, malformed or out of range is processed with the
time its delivery was received (the inbox row's `received_at`), never dead-lettered.

Before, such an event that moves the user's plan crashed the handler (`record_plan_change` got
None, or `datetime.fromtimestamp` raised on a Clerk timestamp of 10**20) and the row ended `failed`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models.app import SubscriptionEvent
from models.billing import UserPlan
from models.inbox import WebhookInbox
from tests.support.billing import CLERK_ID, add_plan, add_user, asaas_event, clerk_event, subscription_events
from tests.support.inbox import deliver
from worker.billing.provider_times import asaas_date, asaas_timestamp, clerk_epoch

PLAN_CREDITS = 500


@pytest.fixture
def plan(session_factory: sessionmaker[Session]) -> str:
    """The fixtures' user, and the plan both providers' fixtures name (Asaas `pro`, Clerk
    `cplan_2xPro`)."""
    add_user(session_factory)
    return add_plan(session_factory, id="pro", name="Pro", credits=PLAN_CREDITS, asaas_id="pro", clerk_id="cplan_2xPro")


def _naive_utc_ms(moment: datetime) -> datetime:
    """What a TIMESTAMP(3) column holds of an aware time: naive UTC, whole milliseconds."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def _logged_event(factory: sessionmaker[Session], event_type: str) -> SubscriptionEvent:
    [event] = [event for event in subscription_events(factory) if event.event_type == event_type]
    return event


def _assert_took_received_time(factory: sessionmaker[Session], session: Session, row: WebhookInbox) -> None:
    assert (row.status, row.last_error) == ("processed", None), row.last_error
    received = _naive_utc_ms(row.received_at)
    assert _logged_event(factory, row.event_type).occurred_at == received
    user_plan = session.get(UserPlan, CLERK_ID)
    assert user_plan is not None
    assert (user_plan.plan_id, user_plan.occurred_at) == ("pro", received.replace(tzinfo=UTC))


def test_clerk_timestamp_out_of_range_without_usable_data_times_takes_the_received_time(
    session_factory: sessionmaker[Session], session: Session, plan: str
) -> None:
    body = clerk_event("subscriptionItem.active", timestamp=10**20, data={"updated_at": "yesterday", "created_at": -1})
    row = deliver(session_factory, "clerk", body)
    _assert_took_received_time(session_factory, session, row)


ASAAS_UNUSABLE_DATES = {
    "missing": (None, None),
    "garbage": ("garbage", "not a date"),
    "out of range": ("9999-12-31 23:59:59", "31/02/2024"),
}


@pytest.mark.parametrize("event_type", ["PAYMENT_CONFIRMED", "SUBSCRIPTION_UPDATED"])
@pytest.mark.parametrize("dates", ASAAS_UNUSABLE_DATES.values(), ids=ASAAS_UNUSABLE_DATES.keys())
def test_asaas_event_without_a_usable_date_takes_the_received_time(
    session_factory: sessionmaker[Session],
    session: Session,
    plan: str,
    event_type: str,
    dates: tuple[str | None, str | None],
) -> None:
    envelope_date, object_date = dates
    if event_type == "PAYMENT_CONFIRMED":
        body = asaas_event("PAYMENT_CONFIRMED", event_id="evt_no_date&1")
        obj: dict[str, Any] = body["payment"]
    else:  # no fixture of its own: a SUBSCRIPTION_CREATED body, retyped
        body = asaas_event("SUBSCRIPTION_CREATED", event_id="evt_no_date&2")
        body["event"] = "SUBSCRIPTION_UPDATED"
        obj = body["subscription"]
    for holder, value in ((body, envelope_date), (obj, object_date)):
        if value is None:
            holder.pop("dateCreated", None)
        else:
            holder["dateCreated"] = value
    row = deliver(session_factory, "asaas", body)
    _assert_took_received_time(session_factory, session, row)
    if event_type == "PAYMENT_CONFIRMED":
        assert row.detail is not None and row.detail.startswith(f"granted {PLAN_CREDITS} credits of plan pro")


@pytest.mark.parametrize(
    "value",
    [10**20, 10**400, float("inf"), float("nan"), 253_402_300_800_000],
    ids=["1e20", "1e400", "inf", "nan", "year 10000 in ms"],
)
def test_clerk_epoch_out_of_range_is_none(value: float) -> None:
    assert clerk_epoch(value) is None


def test_asaas_dates_out_of_range_are_none() -> None:
    # 23:59 in São Paulo on the last day datetime holds is already past it in UTC.
    assert asaas_timestamp("9999-12-31 23:59:59") is None
    assert asaas_timestamp("2024-06-12 16:45:03") == datetime(2024, 6, 12, 19, 45, 3)
    assert asaas_date("31/02/2024") is None
    assert asaas_date("9999-12-31") == datetime(9999, 12, 31, 3, 0)
