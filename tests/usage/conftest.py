"""Fixtures of the usage tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.inbox import assert_ledger_matches_balances
from tests.support.usage import credits_client
from worker.usage import costs


@pytest.fixture(autouse=True)
def fresh_cost_cache() -> Iterator[None]:
    """Tables are emptied between tests: this process's cost cache must not outlive them."""
    costs.cache.clear()
    yield
    costs.cache.clear()


@pytest.fixture
def client(celery_worker, producer, session_factory):
    """A signed client of the `tests` service on the session's worker; the ledger is checked
    after the test."""
    client = credits_client(producer.conf.broker_url)
    yield client
    client.close()
    assert_ledger_matches_balances(session_factory)
