"""`pedro-webhooks inbox status` and `inbox replay`, against the run's database and a real worker."""

from __future__ import annotations

import subprocess
import sys
import time

from click.testing import CliRunner

from ops.cli import main
from tests.support.inbox import deliver, inbox_row, payload


def test_status_counts_rows_by_source_and_status(session_factory):
    deliver(session_factory, "clerk", payload("clerk/user.created"))
    deliver(session_factory, "clerk", {"type": "session.created", "data": {}})
    result = CliRunner().invoke(main, ["inbox", "status"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["clerk  ignored    1", "clerk  processed  1"]


def test_status_counts_payments_that_need_attention(session_factory):
    from tests.support.billing import add_user, asaas_event

    add_user(session_factory)
    deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))  # no Plan matches
    result = CliRunner().invoke(main, ["inbox", "status"])
    assert result.exit_code == 0, result.output
    assert "asaas  needs_attention 1" in result.output.splitlines()


def test_replay_by_status_enqueues_and_the_worker_processes(celery_worker, session_factory):
    row = deliver(session_factory, "clerk", {"type": "user.created", "data": {"email_addresses": []}})
    assert row.status == "failed"  # no data.id: a payload that can never succeed
    # A process of its own, as an operator runs it: the message goes through the broker.
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "inbox", "replay", "--status", "failed"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"replayed 1 row(s), enqueued 1: [{row.id}]"
    deadline = time.monotonic() + 30
    while inbox_row(session_factory, row.id).attempts < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    replayed = inbox_row(session_factory, row.id)
    assert (replayed.status, replayed.attempts) == ("failed", 2)  # tried again, still malformed


def test_replay_needs_ids_or_a_status(session_factory):
    result = CliRunner().invoke(main, ["inbox", "replay"])
    assert result.exit_code == 2 and "name inbox ids or --status" in result.output


def test_payments_that_need_attention_are_granted_once_replayed_by_status(session_factory):
    from models.app import Plan
    from tests.support.billing import add_user, asaas_event, balance

    add_user(session_factory)
    row = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    assert row.status == "needs_attention"
    with session_factory.begin() as session:
        session.add(Plan(id="pro", asaas_id="pro", name="Pro", credits=500))
    result = CliRunner().invoke(main, ["inbox", "replay", "--status", "needs_attention"])
    assert result.exit_code == 0 and f"[{row.id}]" in result.output, result.output
    assert inbox_row(session_factory, row.id).status == "processed"
    assert balance(session_factory) == 100 + 500


def test_a_payment_logged_before_its_plan_is_granted_once_replayed_by_id(session_factory):
    from models.app import Plan
    from tests.support.billing import add_user, asaas_event, balance

    add_user(session_factory)
    row = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    assert row.status == "needs_attention" and "nothing granted" in row.detail
    with session_factory.begin() as session:
        session.add(Plan(id="pro", asaas_id="pro", name="Pro", credits=500))
    for _ in range(2):  # replayed twice: granted once
        result = CliRunner().invoke(main, ["inbox", "replay", str(row.id)])
        assert result.exit_code == 0 and f"[{row.id}]" in result.output, result.output
    assert inbox_row(session_factory, row.id).detail.startswith("asaas payment pay_080225913252 already granted")
    assert balance(session_factory) == 100 + 500
