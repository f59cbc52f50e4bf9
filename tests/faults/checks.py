"""What every scenario asserts once the fault is over, and the line of figures it prints.

- every delivery answered 200 is stored once and is final within the bound (polled to a deadline);
- every balance equals what the events imply, and per balance creditsRemaining == sum(ledger);
- one `UsageHistory` row per applied debit key; nothing applied twice (one signup per user,
  one grant per payment, one usage entry per applied debit).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from tests.faults.harness import Cluster
from tests.faults.providers import DebitService, ProviderStream
from tests.faults.workload import PLAN_CREDITS, SIGNUP_CREDITS, Workload

POLL = 0.2


@dataclass
class Figures:
    name: str
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"fault {self.name}: " + " ".join(f"{key}={value}" for key, value in self.values.items())


def print_figures(capsys: pytest.CaptureFixture[str], figures: Figures) -> None:
    """One line, visible whatever pytest's capture setting (`-s` or not)."""
    with capsys.disabled():
        print(f"\n{figures.line()}", flush=True)


def unsettled(world: Cluster) -> int | None:
    """Inbox rows still `pending`; None while the database does not answer."""
    try:
        with world.connect() as conn:
            row = conn.execute("SELECT count(*) FROM ingest.webhook_inbox WHERE status = 'pending'").fetchone()
    except psycopg.OperationalError:
        return None
    assert row is not None
    return int(row[0])


def wait_until_final(world: Cluster, since: float, bound: float) -> float | None:
    """Poll until no inbox row is `pending`, at most `bound` seconds after `since` (monotonic);
    the seconds it took from `since`, or None if the deadline passed first."""
    deadline = since + bound
    while True:
        if unsettled(world) == 0:
            return round(time.monotonic() - since, 1)
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL)


def wait_for_answers(debits: DebitService, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not debits.answered() and time.monotonic() < deadline:
        time.sleep(POLL)


def inbox_rows(world: Cluster) -> list[dict[str, Any]]:
    with world.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(
            "SELECT id, source, external_id, event_type, status, attempts, last_error, detail "
            "FROM ingest.webhook_inbox ORDER BY id"
        ).fetchall()


def statuses(world: Cluster) -> Counter[str]:
    return Counter(row["status"] for row in inbox_rows(world))


def assert_stored_once_and_final(
    world: Cluster, stream: ProviderStream, expected_status: dict[str, str] | None = None
) -> None:
    """Every delivery answered 200 has exactly one inbox row, with its final status:
    `processed`, or what `expected_status` says for that event id."""
    expected_status = expected_status or {}
    assert stream.stats.accepted == stream.stats.sent, f"deliveries never answered 200: {stream.stats}"
    rows = inbox_rows(world)
    by_id = Counter((row["source"], row["external_id"]) for row in rows)
    sent = {(delivery.source, delivery.event_id) for delivery in stream.sends}
    assert not [key for key, count in by_id.items() if count > 1], "an event stored twice"
    assert sent - set(by_id) == set(), "deliveries answered 200 but not stored"
    assert set(by_id) - sent == set(), "rows for deliveries never sent"
    wrong = [
        (row["id"], row["event_type"], row["status"], row["detail"], row["last_error"])
        for row in rows
        if row["status"] != expected_status.get(row["external_id"], "processed")
    ]
    assert wrong == [], f"rows not in their expected final status: {wrong}"


def assert_money(world: Cluster, workload: Workload, debits: DebitService) -> None:
    """Balances as the events imply, ledger == balance, one effect per event and per debit key."""
    not_applied = {key: answer for key, answer in debits.answers.items() if key not in debits.applied_keys()}
    assert debits.answered(), f"debits without an answer: {debits.total - len(debits.answers)} ({debits.stats})"
    assert not_applied == {}, f"debits not applied: {not_applied}"
    with world.connect() as conn:
        balances: dict[str, int] = dict(
            conn.execute('SELECT "clerkUserId", "creditsRemaining" FROM "CreditBalance"').fetchall()
        )
        mismatched = conn.execute(
            'SELECT b."clerkUserId", b."creditsRemaining", coalesce(sum(l.delta), 0) FROM "CreditBalance" b '
            "LEFT JOIN ingest.credit_ledger l ON l.credit_balance_id = b.id "
            'GROUP BY b.id HAVING b."creditsRemaining" <> coalesce(sum(l.delta), 0)'
        ).fetchall()
        entries = conn.execute(
            "SELECT kind, clerk_user_id, idempotency_key, delta FROM ingest.credit_ledger WHERE kind <> 'external'"
        ).fetchall()
        usage_rows = conn.execute('SELECT id FROM "UsageHistory"').fetchall()
        requests = conn.execute(
            "SELECT idempotency_key, status, usage_id FROM ingest.usage_requests WHERE kind = 'debit'"
        ).fetchall()

    spent = Counter[str]()
    for debit in workload.debits:
        spent[debit.clerk_user_id] += debit.cost
    expected = {user: SIGNUP_CREDITS + PLAN_CREDITS - spent[user] for user in workload.users}
    assert balances == expected, {
        user: (balances.get(user), want) for user, want in expected.items() if balances.get(user) != want
    }
    assert mismatched == [], f"creditsRemaining != sum(ledger): {mismatched}"

    kinds = Counter((kind, user) for kind, user, _key, _delta in entries)
    assert {user for (kind, user) in kinds if kind == "signup"} == set(workload.users)
    assert all(count == 1 for (kind, _user), count in kinds.items() if kind in ("signup", "grant")), kinds
    grants = {key for kind, _user, key, _delta in entries if kind == "grant"}
    assert grants == {f"grant:asaas:{payment}" for payment in workload.payment_ids()}, "one grant per payment"

    applied = {key for key, status, _usage in requests if status == "applied"}
    assert applied == debits.applied_keys() == {debit.key for debit in workload.debits}
    usage_ids = [usage for _key, status, usage in requests if status == "applied"]
    assert sorted(usage_ids) == sorted(row[0] for row in usage_rows), "one UsageHistory row per applied debit key"
    assert sum(1 for kind, *_ in entries if kind == "usage") == len(applied), "one usage entry per applied debit"
