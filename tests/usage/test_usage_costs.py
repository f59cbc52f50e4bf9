"""Cost precedence: explicit > current plan's override > AdminSettings.featureCosts > error."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import update

from models.app import AdminSettings, Plan
from models.billing import UserPlan
from tests.support.billing import CLERK_ID, clerk_event
from tests.support.inbox import deliver, payload
from tests.support.servers import PROJECT_ROOT
from tests.support.usage import balance, debit, make_user, put_on_plan, set_feature_costs
from worker.usage import costs

USAGE_API = (PROJECT_ROOT / "docs" / "usage-api.md").read_text()


@pytest.fixture(autouse=True)
def user(session_factory):
    make_user(session_factory, credits=1000)


def spent(factory, key, clerk_user_id="user_a", **fields) -> int:
    before = balance(factory, clerk_user_id)
    result = debit(factory, key, clerk_user_id=clerk_user_id, **fields)
    assert result["status"] == "applied", result
    return before - result["remaining"]


def test_a_missing_singleton_is_created_with_the_seed_example_costs(session_factory):
    assert spent(session_factory, "k1", operation="AI_TEXT_CHAT") == 1
    assert spent(session_factory, "k2", operation="AI_IMAGE_GENERATION") == 10
    with session_factory() as session:
        assert session.get(AdminSettings, "singleton").feature_costs == costs.SEED_FEATURE_COSTS


def test_explicit_cost_beats_plan_and_feature_costs(session_factory):
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 5})
    put_on_plan(session_factory, "user_a", {"AI_TEXT_CHAT": 2})
    assert spent(session_factory, "k1", cost=7) == 7


def test_current_plan_override_beats_feature_costs(session_factory):
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 5, "AI_IMAGE_GENERATION": 10})
    put_on_plan(session_factory, "user_a", {"AI_TEXT_CHAT": 0})
    assert spent(session_factory, "k1", operation="AI_TEXT_CHAT") == 0
    assert spent(session_factory, "k2", operation="AI_IMAGE_GENERATION") == 10  # not overridden


def test_a_plan_that_ended_does_not_apply(session_factory):
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 5})
    put_on_plan(session_factory, "user_a", {"AI_TEXT_CHAT": 2})
    with session_factory.begin() as session:  # what the billing handlers do when it ends
        session.execute(update(UserPlan).values(plan_id=None, status="ended"))
    assert spent(session_factory, "k1") == 5


@pytest.mark.parametrize("status", ["active", "trialing", "past_due", "canceled", "CONFIRMED", "OVERDUE"])
def test_a_plan_applies_until_it_ends_whatever_its_status(session_factory, status):
    """The plan's status is the provider's word (Clerk or Asaas spelling) and does not matter:
    the billing handlers decide when the plan starts and ends."""
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 5})
    put_on_plan(session_factory, "user_a", {"AI_TEXT_CHAT": 2}, status=status)
    assert spent(session_factory, "k1") == 2


def test_a_past_due_or_canceled_clerk_plan_keeps_its_override_and_an_ended_one_loses_it(session_factory):
    """End to end with the Clerk billing handlers: past due and canceled (usable until the
    period ends) keep the plan; the item's end ends it."""
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 5})
    make_user(session_factory, CLERK_ID, credits=1000)
    with session_factory.begin() as session:
        session.add(Plan(id="pro", clerk_id="cplan_2xPro", name="Pro", credits=0, features={"AI_TEXT_CHAT": 2}))

    def item(status: str, timestamp: int) -> None:
        body = clerk_event(
            "subscriptionItem.active", type=f"subscriptionItem.{status}", data={"status": status}, timestamp=timestamp
        )
        assert deliver(session_factory, "clerk", body).status == "processed"

    def plan_status() -> tuple[str | None, str]:
        with session_factory() as session:
            row = session.get(UserPlan, CLERK_ID)
            return row.plan_id, row.status

    assert deliver(session_factory, "clerk", clerk_event("subscriptionItem.active")).status == "processed"
    assert spent(session_factory, "k1", clerk_user_id=CLERK_ID) == 2
    assert deliver(session_factory, "clerk", clerk_event("subscriptionItem.pastDue")).status == "processed"
    assert plan_status() == ("pro", "past_due")
    assert spent(session_factory, "k2", clerk_user_id=CLERK_ID) == 2
    item("canceled", 1719561800000)
    assert plan_status() == ("pro", "canceled")
    assert spent(session_factory, "k3", clerk_user_id=CLERK_ID) == 2
    item("ended", 1719561900000)
    assert plan_status() == (None, "ended")
    assert spent(session_factory, "k4", clerk_user_id=CLERK_ID) == 5


def test_a_plan_started_by_an_asaas_payment_sets_the_cost(session_factory):
    """End to end with the billing handlers: the plan an Asaas payment started (status
    CONFIRMED, Asaas's spelling) is the one whose features price the debit."""
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 5})
    with session_factory.begin() as session:
        session.add(Plan(id="pro", asaas_id="pro", name="Pro", credits=0, features={"AI_TEXT_CHAT": 3}))
    body = payload("asaas/PAYMENT_CONFIRMED")
    body["payment"]["externalReference"] = "user_a|pro"
    assert deliver(session_factory, "asaas", body).status == "processed"
    assert spent(session_factory, "k1") == 3


def test_no_cost_anywhere_is_an_unknown_cost_error(session_factory):
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 1})
    result = debit(session_factory, "k1", operation="AI_VIDEO_GENERATION")
    assert (result["status"], result["error"]) == ("error", "unknown_cost")


@pytest.mark.parametrize("bad", ["1", 1.5, -2, None])
def test_a_malformed_configured_cost_is_refused_not_guessed(session_factory, bad):
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": bad})
    result = debit(session_factory, "k1")
    assert (result["status"], result["error"]) == ("error", "unknown_cost")
    assert balance(session_factory) == 1000


def test_the_cache_serves_within_its_ttl_and_rereads_after(session_factory):
    now = [0.0]
    cache = costs.TtlCache(costs.CACHE_SECONDS, clock=lambda: now[0])
    set_feature_costs(session_factory, {"AI_TEXT_CHAT": 1})
    with session_factory() as session:
        read = lambda: cache.get("featureCosts", lambda: costs.feature_costs(session))  # noqa: E731
        assert read() == {"AI_TEXT_CHAT": 1}
        set_feature_costs(session_factory, {"AI_TEXT_CHAT": 3})
        session.rollback()  # a new snapshot, as each debit has
        now[0] = costs.CACHE_SECONDS - 1
        assert read() == {"AI_TEXT_CHAT": 1}
        now[0] = costs.CACHE_SECONDS
        assert read() == {"AI_TEXT_CHAT": 3}
    # The usage API's promise (well within the minute): a change shows within 30 s.
    promised = re.search(r"Costs are\s+cached for at most (\d+) s per worker process", USAGE_API)
    assert promised is not None, "docs/usage-api.md no longer states the cost cache's lifetime"
    assert costs.CACHE_SECONDS == int(promised.group(1)) == 30
    assert costs.cache.seconds == costs.CACHE_SECONDS  # the cache every debit uses
