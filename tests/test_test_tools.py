"""A program a test needs is a skip on a developer's machine without it, a failure in CI."""

from __future__ import annotations

import shutil

import pytest

from tests.support.tools import REQUIRE_TOOLS_VARIABLE, require_tool

MISSING = "pedro-webhooks-no-such-program"


def test_a_present_tool_is_found_by_path():
    assert require_tool("sh", "the test") == shutil.which("sh")


def test_a_missing_tool_skips_the_test(monkeypatch):
    monkeypatch.delenv(REQUIRE_TOOLS_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"`{MISSING}` is not on PATH: runs the thing"):
        require_tool(MISSING, "runs the thing")


def test_a_missing_tool_fails_the_test_where_tools_are_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_TOOLS_VARIABLE, "1")
    with pytest.raises(
        pytest.fail.Exception, match=f"`{MISSING}` is not on PATH: runs the thing .*REQUIRE_TEST_TOOLS=1"
    ):
        require_tool(MISSING, "runs the thing")
