"""What an operation costs a user: the explicit cost, else the user's current plan's override
(`Plan.features[operation]`), else `AdminSettings.featureCosts[operation]`, else `UnknownCost`.

A user's current plan is `worker.plans.current_plan.current_plan_query`: the billing handlers are the one
place that decides when a plan starts and ends, whatever the provider's status spelling.

The cost tables change rarely and every debit reads them, so `Plan.features` and
`AdminSettings.featureCosts` are cached in the process for CACHE_SECONDS: an edit made in the
Next.js admin shows within that time (the issue allows up to a minute). The user's plan row is
not cached: a billing event must take effect on the next debit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Text, bindparam, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import AdminSettings, OperationType, Plan
from models.base import utcnow
from worker.plans.current_plan import current_plan_query

CACHE_SECONDS = 30.0
ADMIN_SETTINGS_ID = "singleton"
# What a missing AdminSettings row is created with: the seed's documented example costs.
SEED_FEATURE_COSTS = {"AI_TEXT_CHAT": 1, "AI_IMAGE_GENERATION": 10}


class UnknownCost(Exception):
    """No explicit cost, no plan override and no featureCosts entry (or a malformed one)."""


class TtlCache:
    """A tiny per-process cache; `clock` is injectable so expiry is testable without sleeping."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self._entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        now = self.clock()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.seconds:
            return hit[1]
        value = load()
        self._entries[key] = (now, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


cache = TtlCache(CACHE_SECONDS)


READ_PLAN: Any = object()  # resolve_cost's default: read the user's current plan itself


def resolve_cost(
    session: Session,
    clerk_user_id: str,
    operation: OperationType,
    explicit: int | None,
    *,
    plan_id: str | None = READ_PLAN,
) -> int:
    """`plan_id`: the user's current plan as the caller already read it (`current_plan_query`,
    in the same transaction), to spare a round trip; by default it is read here."""
    if explicit is not None:
        return explicit
    if plan_id is READ_PLAN:
        plan_id = current_plan_id(session, clerk_user_id)
    if plan_id is not None:
        features = cache.get(("plan", plan_id), lambda: _plan_features(session, plan_id))
        if operation.value in features:
            return _valid_cost(features[operation.value], f"Plan.features[{operation.value}]")
    costs = cache.get("featureCosts", lambda: feature_costs(session))
    if operation.value in costs:
        return _valid_cost(costs[operation.value], f"AdminSettings.featureCosts[{operation.value}]")
    raise UnknownCost(f"no cost configured for {operation.value}")


_CURRENT_PLAN = current_plan_query(bindparam("clerk_user_id", type_=Text))


def current_plan_id(session: Session, clerk_user_id: str) -> str | None:
    return session.scalar(_CURRENT_PLAN, {"clerk_user_id": clerk_user_id})


def feature_costs(session: Session) -> dict[str, Any]:
    """The singleton's featureCosts, creating the row with the seed's costs if it is missing."""
    now = utcnow()
    session.execute(
        insert(AdminSettings)
        .values(id=ADMIN_SETTINGS_ID, feature_costs=SEED_FEATURE_COSTS, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=[AdminSettings.id])
    )
    costs = session.scalar(select(AdminSettings.feature_costs).where(AdminSettings.id == ADMIN_SETTINGS_ID))
    return costs if isinstance(costs, dict) else {}


def _plan_features(session: Session, plan_id: str) -> dict[str, Any]:
    features = session.scalar(select(Plan.features).where(Plan.id == plan_id))
    return features if isinstance(features, dict) else {}


def _valid_cost(value: Any, where: str) -> int:
    # JSON is edited by hand in the admin: refuse anything but a whole non-negative number
    # rather than guess (a string "1" or 0.5 would otherwise charge something nobody chose).
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnknownCost(f"{where} is not a non-negative integer")
    return value
