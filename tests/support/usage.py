"""Users, plans and costs for usage tests, and the usage rules run as the tasks run them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from pedro_credits import CreditsClient
from pedro_credits.client import Pending
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from models.app import AdminSettings, CreditBalance, Plan, User
from models.billing import UserPlan
from models.usage import CreditHold, UsageRequest
from tests.support.celery_worker import wait_for_state
from worker.credits.ledger import open_credit_balance
from worker.usage import debits, holds, refunds
from worker.usage.apply_many import apply_many

Factory = sessionmaker[Session]


def make_user(factory: Factory, clerk_id: str = "user_a", credits: int = 100, active: bool = True) -> None:
    """A user with a balance opened through the ledger (the invariant holds from the start)."""
    with factory.begin() as session:
        user = User(clerk_id=clerk_id, is_active=active)
        session.add(user)
        session.flush()
        open_credit_balance(session, user, credits, reference="test")


def debit(
    factory: Factory, key: str, clerk_user_id: str = "user_a", operation: str = "AI_TEXT_CHAT", **fields: Any
) -> dict[str, Any]:
    """One debit in its own transaction, as the `usage.debit` task runs it (sent by `tests`)."""
    fields.setdefault("service", "tests")
    with factory.begin() as session:
        return debits.debit(session, debits.DebitRequest(clerk_user_id, operation, key, **fields))


def refund(factory: Factory, key: str, refund_of: str, clerk_user_id: str = "user_a", **fields: Any) -> dict[str, Any]:
    fields.setdefault("service", "tests")
    with factory.begin() as session:
        return refunds.refund(session, refunds.RefundRequest(clerk_user_id, key, refund_of, **fields))


def set_feature_costs(factory: Factory, costs: dict[str, Any]) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    with factory.begin() as session:
        session.execute(
            insert(AdminSettings)
            .values(id="singleton", feature_costs=costs, created_at=now, updated_at=now)
            .on_conflict_do_update(index_elements=[AdminSettings.id], set_={"featureCosts": costs})
        )


def put_on_plan(factory: Factory, clerk_user_id: str, features: dict[str, Any], status: str = "active") -> str:
    """A Plan with these overrides, made the user's current plan as the billing handlers would."""
    with factory.begin() as session:
        plan = Plan(name="Pro", credits=1000, features=features)
        session.add(plan)
        session.flush()
        session.add(
            UserPlan(
                clerk_user_id=clerk_user_id,
                plan_id=plan.id,
                provider="clerk",
                status=status,
                occurred_at=datetime.now(UTC),
            )
        )
        return plan.id


def balance(factory: Factory, clerk_user_id: str = "user_a") -> int:
    with factory() as session:
        return session.scalar(
            select(CreditBalance.credits_remaining).where(CreditBalance.clerk_user_id == clerk_user_id)
        )


def usage_credits(factory: Factory) -> list[int]:
    """`creditsUsed` of every UsageHistory row, oldest first."""
    with factory() as session:
        return list(session.scalars(text('SELECT "creditsUsed" FROM "UsageHistory" ORDER BY timestamp, id')))


def ledger_deltas(factory: Factory, kind: str) -> list[int]:
    with factory() as session:
        return list(
            session.scalars(text("SELECT delta FROM ingest.credit_ledger WHERE kind = :k ORDER BY id"), {"k": kind})
        )


def stored_status(factory: Factory, key: str) -> str | None:
    with factory() as session:
        return session.scalar(select(UsageRequest.status).where(UsageRequest.idempotency_key == key))


def count_rows(factory: Factory, model: type) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def credits_client(broker_url: str, service: str = "tests") -> CreditsClient:
    """A `CreditsClient` of one of the services the test workers know (tests/conftest.py)."""
    from tests.conftest import USAGE_TEST_KEYS

    return CreditsClient(broker_url, service, USAGE_TEST_KEYS[service])


def answers(pending: list[Pending]) -> list[dict[str, Any]]:
    return [one.answer() for one in pending]


def wait_for_retry(producer: Celery, pending: Pending, timeout: float = 30) -> None:
    """The worker ran the request and is waiting to try again (its RETRY state)."""
    wait_for_state(AsyncResult(pending.task_id, app=producer), "RETRY", timeout)


def hold(factory: Factory, key: str, clerk_user_id: str = "user_a", operation: str = "AI_TEXT_CHAT", **fields: Any):
    """One hold in its own transaction, as a worker's batch of one applies it (sent by `tests`)."""
    fields.setdefault("service", "tests")
    return _alone(factory, holds.HoldRequest(clerk_user_id, operation, key, **fields))


def capture(factory: Factory, key: str, credits: int, **fields: Any) -> dict[str, Any]:
    fields.setdefault("service", "tests")
    return _alone(factory, holds.CaptureRequest(key, credits, **fields))


def release(factory: Factory, key: str, service: str = "tests") -> dict[str, Any]:
    return _alone(factory, holds.ReleaseRequest(key, service))


def _alone(factory: Factory, request: Any) -> dict[str, Any]:
    with factory.begin() as session:
        (answer,) = apply_many(session, [(request, True)], holds.lock_holds)
    assert answer is not None
    return answer


def hold_state(factory: Factory, key: str) -> str | None:
    with factory() as session:
        return session.scalar(select(CreditHold.state).where(CreditHold.hold_key == key))
