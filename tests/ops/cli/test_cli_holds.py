"""Credit holds as an operator sees them: `user show` lists the open ones, `reconcile` checks that
each hold's ledger entries match how it stands, `report credits-flow` counts them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from sqlalchemy import text

from tests.support.cli import invoke
from tests.support.usage import capture, hold, make_user, release


def _json(*args: str):
    result = invoke(*args, "--json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


def test_user_show_lists_the_open_holds(session_factory):
    make_user(session_factory)
    hold(session_factory, "job-1", credits=30, expires_in=600)
    hold(session_factory, "job-2", credits=5)
    release(session_factory, "job-2")
    shown = _json("user", "show", "user_a")
    assert shown["balance"] == 70 and shown["held_credits"] == 30
    assert [h["hold_key"] for h in shown["open_holds"]] == ["job-1"]
    assert [e["kind"] for e in shown["ledger"][:3]] == ["release", "hold", "hold"]
    printed = invoke("user", "show", "user_a").output
    assert "30 more held by 1 open hold(s)" in printed and "job-1" in printed


def test_reconcile_checks_each_holds_entries(session_factory, settings):
    make_user(session_factory)
    hold(session_factory, "ok-1", credits=30)
    capture(session_factory, "ok-1", 20)
    hold(session_factory, "ok-2", credits=10)
    assert invoke("reconcile").exit_code == 0
    with session_factory.begin() as session:  # a hold marked released whose credits never came back
        session.execute(text("UPDATE ingest.credit_holds SET state = 'released' WHERE hold_key = 'ok-2'"))
    found = _json("reconcile")
    mismatches = found["mismatches"] if isinstance(found, dict) else found
    assert [(m["check"], m["subject"]) for m in mismatches] == [("hold", "hold ok-2")]
    assert "expected 10 held and 10 released" in mismatches[0]["detail"]


def test_credits_flow_counts_holds_captures_releases_and_expiries(session_factory):
    make_user(session_factory)
    for key in ("a", "b", "c"):
        hold(session_factory, key, credits=10, expires_in=0.1 if key == "c" else 600)
    capture(session_factory, "a", 4)
    release(session_factory, "b")
    time.sleep(0.2)
    assert capture(session_factory, "c", 1)["status"] == "expired"
    today = datetime.now(UTC).date().isoformat()
    [day] = [row for row in _json("report", "credits-flow") if row["day"] == today]
    assert (day["holds"], day["captures"], day["releases"], day["expiries"]) == (3, 1, 1, 1)
    assert (day["hold"], day["release"]) == (-30, 6 + 10 + 10)
