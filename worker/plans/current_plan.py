"""Each user's current plan: moved by the billing handlers, read by usage costs.

The current plan lives in `user_plans`, moved by the latest subscription events (by provider
time: an older event never overwrites a newer one). `current_plan_query` is what usage costs read.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import Plan
from models.base import table_of
from models.billing import UserPlan


class PlanChange(enum.Enum):
    STARTS = "starts"  # this plan is now the user's plan
    STATUS = "status"  # the user's plan (if it is this one) changes status, e.g. past due
    ENDS = "ends"  # the user's plan (if it is this one) ends: no plan


def record_plan_change(
    session: Session,
    *,
    clerk_user_id: str,
    plan_id: str,
    provider: str,
    status: str,
    occurred_at: datetime,
    change: PlanChange,
) -> None:
    """Move the user's current plan, unless a newer event already did.

    STATUS and ENDS touch only the plan they are about, so the end of an old plan never clears
    the plan that replaced it.
    """
    at = occurred_at.replace(tzinfo=UTC)
    new_plan_id = None if change is PlanChange.ENDS else plan_id
    statement = insert(UserPlan).values(
        clerk_user_id=clerk_user_id, plan_id=new_plan_id, provider=provider, status=status, occurred_at=at
    )
    newer = UserPlan.occurred_at <= statement.excluded.occurred_at
    if change is not PlanChange.STARTS:
        newer = newer & (UserPlan.plan_id == plan_id)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[UserPlan.clerk_user_id],
            set_={
                "plan_id": statement.excluded.plan_id,
                "provider": provider,
                "status": status,
                "occurred_at": statement.excluded.occurred_at,
                "updated_at": func.now(),
            },
            where=newer,
        )
    )


def current_plan_query(clerk_user_id: str | ColumnElement[str]) -> Select[str | None]:
    """SELECT the user's current plan id: set while the plan is in effect (cleared when it
    ends; a past-due or canceled-until-period-end subscription keeps it), whatever the
    provider's status spelling (Clerk `active`, Asaas `CONFIRMED`...). A Core statement on the
    table, so the debit can embed it in a statement of its own (worker.usage.debits, worker.usage.costs)."""
    plans = table_of(UserPlan)
    return select(plans.c.plan_id).where(plans.c.clerk_user_id == clerk_user_id, plans.c.plan_id.is_not(None))


def current_plan(session: Session, clerk_user_id: str) -> Plan | None:
    """The user's current plan, or None (never subscribed, or the plan ended)."""
    return session.scalar(select(Plan).where(Plan.id == current_plan_query(clerk_user_id).scalar_subquery()))
