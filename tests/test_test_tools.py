"""A program a test needs is a skip on a developer's machine without it, a failure in CI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.support.servers import PROJECT_ROOT
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


# How a test can skip itself besides `require_tool`.
_SKIPS = re.compile(r"pytest\.skip\(|mark\.skip(if)?\b|importorskip\(|raise\s+[\w.]*SkipTest")


def test_no_test_skips_but_through_require_tool():
    """Any other skip would pass silently in CI, where REQUIRE_TEST_TOOLS=1 must fail instead."""
    here = Path(__file__).resolve()
    allowed = {here, (here.parent / "support" / "tools.py").resolve()}
    skipping = [
        f"{path.relative_to(PROJECT_ROOT)}:{n}"
        for path in sorted((PROJECT_ROOT / "tests").rglob("*.py"))
        if path.resolve() not in allowed
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if _SKIPS.search(line)
    ]
    assert skipping == [], "use tests.support.tools.require_tool instead"


def test_ci_requires_the_tools_and_stops_when_one_cannot_be_installed():
    """.ci/run exits when it cannot install a program a test needs (never "will be skipped"),
    and sets REQUIRE_TEST_TOOLS=1 before the suite."""
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    for program in ("chromium", "pgbouncer", "nodejs npm", "openssl"):
        install = re.search(rf"apt-get install -y -q {program}; }}; then\n(.*?)\n  fi", ci, re.S)
        assert install, f".ci/run does not install {program}"
        assert "exit 1" in install.group(1), f".ci/run carries on without {program}"
    assert "skipped" not in ci
    assert ci.index(f"export {REQUIRE_TOOLS_VARIABLE}=1") < ci.index(".venv/bin/pytest")
