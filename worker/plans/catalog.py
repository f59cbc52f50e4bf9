"""Which `Plan` a billing event is for.

Clerk: `Plan.clerkId` equals the item's plan id, else `Plan.clerkName` equals its slug.
Asaas: the plan key (from `externalReference`, else the one stored for the Asaas subscription)
matching `Plan.asaasId` or `Plan.id`, else a `Plan` whose `asaasId` is the payment link.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models.app import Plan


def plan_for_clerk(session: Session, plan_id: str | None, slug: str | None) -> Plan | None:
    if plan_id:
        plan = session.scalar(select(Plan).where(Plan.clerk_id == plan_id))
        if plan is not None:
            return plan
    if slug:
        # clerkName is not unique: prefer the active plan, then the lowest sortOrder.
        return session.scalar(
            select(Plan).where(Plan.clerk_name == slug).order_by(Plan.active.desc(), Plan.sort_order, Plan.id).limit(1)
        )
    return None


def plan_for_asaas(session: Session, plan_keys: list[str | None], payment_link: str | None) -> Plan | None:
    """The first of `plan_keys` naming a plan (by `asaasId`, then `id`), else the payment link's."""
    for key in filter(None, plan_keys):
        plan = session.scalar(
            select(Plan)
            .where(or_(Plan.asaas_id == key, Plan.id == key))
            .order_by((Plan.asaas_id == key).desc())
            .limit(1)
        )
        if plan is not None:
            return plan
    if payment_link:
        return session.scalar(select(Plan).where(Plan.asaas_id == payment_link))
    return None
