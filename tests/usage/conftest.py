"""Fixtures of the usage tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.usage import costs


@pytest.fixture(autouse=True)
def fresh_cost_cache() -> Iterator[None]:
    """Tables are emptied between tests: this process's cost cache must not outlive them."""
    costs.cache.clear()
    yield
    costs.cache.clear()
