"""Cost precedence: explicit > current plan's override > AdminSettings.featureCosts > error."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from models.app import AdminSettings, Plan
from models.billing import UserPlan
from tests.support.inbox import deliver, payload
from tests.support.usage import balance, debit, make_user, put_on_plan, set_feature_costs
from worker.usage import costs


@pytest.fixture(autouse=True)
def user(session_factory):
    make_user(session_factory, credits=1000)


def spent(factory, key, **fields) -> int:
    before = balance(factory)
    result = debit(factory, key, **fields)
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
    assert costs.CACHE_SECONDS <= 60  # the issue: a change must show within a minute
