"""Programs a test needs besides Python (node, npm, ...): skipped where missing on a developer's
machine, a failure where the run must have them (CI sets REQUIRE_TEST_TOOLS=1, so a missing
tool never passes as a silent skip)."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_TOOLS_VARIABLE = "REQUIRE_TEST_TOOLS"


def require_tool(name: str, why: str) -> str:
    """The path of the program `name`; skip the test without it, or fail it when
    REQUIRE_TEST_TOOLS=1. `why` says what the test needs it for."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"`{name}` is not on PATH: {why}"
    if os.environ.get(REQUIRE_TOOLS_VARIABLE) == "1":
        pytest.fail(f"{message} ({REQUIRE_TOOLS_VARIABLE}=1: install it, e.g. Debian's package)", pytrace=False)
    pytest.skip(message)
