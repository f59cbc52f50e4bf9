"""`pedro-webhooks dev seed`: what a fresh local database needs before `send` moves any credits.

A demo `Plan` that `send`'s defaults name (plan key `demo`: Asaas `externalReference`
`user_demo|demo`, Clerk plan `cplan_demo` / slug `demo`), and the `AdminSettings` row with the
seed's feature costs. Running it again changes nothing that exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import Plan
from models.base import utcnow
from ops.sample_deliveries import DEFAULT_AMOUNT_CENTS, DEFAULT_PLAN
from worker.usage.costs import feature_costs

DEMO_PLAN_CREDITS = 500


@dataclass(frozen=True)
class Seeded:
    plan_id: str
    plan_created: bool
    feature_costs: dict[str, object]


def seed_demo(session: Session) -> Seeded:
    now = utcnow()
    created = session.execute(
        insert(Plan)
        .values(
            id=DEFAULT_PLAN,
            asaas_id=DEFAULT_PLAN,
            clerk_id=f"cplan_{DEFAULT_PLAN}",
            clerk_name=DEFAULT_PLAN,
            name="Demo",
            credits=DEMO_PLAN_CREDITS,
            currency="BRL",
            price_monthly_cents=DEFAULT_AMOUNT_CENTS,
            description=f"Demo plan: {DEMO_PLAN_CREDITS} credits per payment (pedro-webhooks dev seed)",
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()  # any of its unique keys: an existing demo plan is kept
        .returning(Plan.id)
    ).scalar_one_or_none()
    return Seeded(DEFAULT_PLAN, created is not None, feature_costs(session))
