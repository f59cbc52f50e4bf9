"""`pedro-webhooks inbox status` and `inbox replay`, against the run's database and a real worker."""

from __future__ import annotations

import subprocess
import sys
import time

from click.testing import CliRunner

from tests.support.inbox import deliver, inbox_row, payload
from worker.cli import main


def test_status_counts_rows_by_source_and_status(session_factory):
    deliver(session_factory, "clerk", payload("clerk/user.created"))
    deliver(session_factory, "clerk", {"type": "session.created", "data": {}})
    result = CliRunner().invoke(main, ["inbox", "status"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["clerk  ignored    1", "clerk  processed  1"]


def test_replay_by_status_enqueues_and_the_worker_processes(celery_worker, session_factory):
    row = deliver(session_factory, "clerk", {"type": "user.created", "data": {"email_addresses": []}})
    assert row.status == "failed"  # no data.id: a payload that can never succeed
    # A process of its own, as an operator runs it: the message goes through the broker.
    result = subprocess.run([sys.executable, "-m", "worker.cli", "inbox", "replay", "--status", "failed"],
                            capture_output=True, text=True, timeout=60)
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
