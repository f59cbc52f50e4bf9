"""The billing tests' plan and user, and the invariants every billing test ends by checking."""

from __future__ import annotations

import pytest

from tests.support.billing import add_pro_plan, add_user, assert_billing_invariants


@pytest.fixture(autouse=True)
def billing_invariants(session_factory):
    """Per user creditsRemaining == sum(ledger); every SubscriptionEvent explained by exactly one
    delivered event, every processed billing event logged."""
    yield
    assert_billing_invariants(session_factory)


@pytest.fixture
def pro_plan(session_factory) -> str:
    """The `pro` plan (tests.support.billing.add_pro_plan), no user yet."""
    return add_pro_plan(session_factory)


@pytest.fixture
def pro(session_factory, pro_plan) -> str:
    """The `pro` plan and its user (created by `user.created` with the signup credits)."""
    add_user(session_factory)
    return pro_plan
