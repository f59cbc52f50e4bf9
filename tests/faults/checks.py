"""What every scenario asserts once the fault is over, and the line of figures it prints.

- every delivery answered 200 is stored once and is final within the bound (polled to a deadline);
- every debit, hold, capture and release answered, as PostgreSQL holds it; every hold ended
  captured, released or expired as its caller said, once;
- every balance = what the events and the answers imply, never below zero, == sum(ledger);
- one signup per user, one grant per payment, the refunds' reversals, one `SubscriptionEvent`
  per Asaas event, one `UsageHistory` row per applied debit and per capture.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from tests.faults.harness import Cluster
from tests.faults.providers import ProviderStream
from tests.faults.services import CreditsService, final_status, is_applied, is_held, is_refused
from tests.faults.workload import CAPTURED_CREDITS, PLAN_CREDITS, SIGNUP_CREDITS, Workload

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


def wait_for_answers(service: CreditsService, deadline: float) -> float | None:
    """Poll until every request of the service is answered, until `deadline` (monotonic); when
    that happened (monotonic), or None."""
    while not service.answered():
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL)
    return service.finished_at or time.monotonic()


def open_holds(world: Cluster) -> int:
    with world.connect() as conn:
        row = conn.execute("SELECT count(*) FROM ingest.credit_holds WHERE state = 'open'").fetchone()
    assert row is not None
    return int(row[0])


def wait_until_holds_ended(world: Cluster, deadline: float) -> bool:
    """Poll until no hold is open (those nobody ends expire), until `deadline` (monotonic)."""
    while open_holds(world):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


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


def assert_money(world: Cluster, workload: Workload, service: CreditsService) -> None:
    """Every request answered as PostgreSQL holds it; balances as the events and the answers
    imply, never below zero, == sum(ledger); one effect per event, debit key and hold."""
    assert service.answered(), f"requests without an answer ({service.stats})"
    with world.connect() as conn:
        state = _money_state(conn)
    _assert_debits(workload, service, state)
    _assert_holds(workload, service, state)
    _assert_balances(workload, service, state)
    _assert_events(workload, state)


def _money_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return conn.execute(sql).fetchall()

    return {
        "balances": dict(rows('SELECT "clerkUserId", "creditsRemaining" FROM "CreditBalance"')),
        "mismatched": rows(
            'SELECT b."clerkUserId", b."creditsRemaining", coalesce(sum(l.delta), 0) FROM "CreditBalance" b '
            "LEFT JOIN ingest.credit_ledger l ON l.credit_balance_id = b.id "
            'GROUP BY b.id HAVING b."creditsRemaining" <> coalesce(sum(l.delta), 0)'
        ),
        "negative": rows(
            "SELECT id, clerk_user_id, kind, balance_after FROM ingest.credit_ledger WHERE balance_after < 0"
        ),
        "entries": rows(
            "SELECT kind, clerk_user_id, idempotency_key, delta FROM ingest.credit_ledger WHERE kind <> 'external'"
        ),
        "usage": dict(rows('SELECT id, "creditsUsed" FROM "UsageHistory"')),
        "debits": rows("SELECT idempotency_key, status, usage_id FROM ingest.usage_requests WHERE kind = 'debit'"),
        "holds": {
            key: (state, usage_id)
            for key, state, usage_id in rows("SELECT hold_key, state, usage_id FROM ingest.credit_holds")
        },
        "subscription_events": Counter(
            rows('SELECT "clerkUserId", "eventType" FROM "SubscriptionEvent"')  # type: ignore[arg-type]
        ),
    }


def _assert_debits(workload: Workload, service: CreditsService, state: dict[str, Any]) -> None:
    wrong = {key: a for key, a in service.answers.items() if not (is_applied(a) or is_refused(a))}
    assert wrong == {}, f"debits answered neither applied nor insufficient_credits: {wrong}"
    applied = {key for key, status, _usage in state["debits"] if status == "applied"}
    assert applied == service.applied_keys(), "the answers do not say what PostgreSQL applied"
    for user in workload.pressure_users:  # more debits than credits: some must be refused
        refused = [key for key, a in service.answers.items() if is_refused(a) and f":{user}:" in key]
        assert refused, f"{user}: no debit answered insufficient_credits under overdraft pressure"
    usage_ids = [usage for _key, status, usage in state["debits"] if status == "applied"]
    assert len(set(usage_ids)) == len(usage_ids) == len(applied), "one UsageHistory row per applied debit key"
    assert sum(1 for kind, *_ in state["entries"] if kind == "usage") == len(applied), "one usage entry per debit"


def _assert_holds(workload: Workload, service: CreditsService, state: dict[str, Any]) -> None:
    """Every hold held once and ended once as its caller (or its expiry) said; a capture took
    CAPTURED_CREDITS once (one UsageHistory row) and gave the rest back."""
    not_held = {hold.key: service.hold_answers.get(hold.key) for hold in workload.holds}
    assert all(a is not None and is_held(a) for a in not_held.values()), f"holds not held: {not_held}"
    ended = {key: final_status(a) for key, a in service.end_answers.items()}
    expected_ends = {hold.key: hold.final_state for hold in workload.holds if hold.end != "expire"}
    assert ended == expected_ends, "captures/releases not answered captured/released"
    states = {key: found for key, (found, _usage) in state["holds"].items()}
    assert states == {hold.key: hold.final_state for hold in workload.holds}, "holds not ended as their callers said"
    for hold in workload.holds:
        _state, usage_id = state["holds"][hold.key]
        taken = [delta for kind, _u, key, delta in state["entries"] if kind == "hold" and key == f"hold:{hold.key}"]
        back = [
            delta for kind, _u, key, delta in state["entries"] if kind == "release" and key == f"release:{hold.key}"
        ]
        captured = CAPTURED_CREDITS if hold.end == "capture" else 0
        assert taken == [-hold.credits] and sum(back) == hold.credits - captured and len(back) <= 1, (hold, taken, back)
        assert (usage_id is not None) == (hold.end == "capture"), hold
        if usage_id is not None:
            assert state["usage"].get(usage_id) == captured, f"{hold.key}: UsageHistory {usage_id} is not the capture"
    debit_usages = {usage for _key, status, usage in state["debits"] if status == "applied"}
    hold_usages = {usage for _state, usage in state["holds"].values() if usage is not None}
    assert set(state["usage"]) == debit_usages | hold_usages, "UsageHistory rows of no debit and no capture"
    assert not debit_usages & hold_usages


def _assert_balances(workload: Workload, service: CreditsService, state: dict[str, Any]) -> None:
    spent = Counter[str]()
    for debit in workload.debits:
        spent[debit.clerk_user_id] += debit.cost if debit.key in service.applied_keys() else 0
    for hold in workload.holds:
        spent[hold.clerk_user_id] += CAPTURED_CREDITS if hold.end == "capture" else 0
    expected = {
        user: SIGNUP_CREDITS + PLAN_CREDITS - workload.reversed_credits.get(user, 0) - spent[user]
        for user in workload.users
    }
    balances = state["balances"]
    assert balances == expected, {
        user: (balances.get(user), want) for user, want in expected.items() if balances.get(user) != want
    }
    assert state["mismatched"] == [], f"creditsRemaining != sum(ledger): {state['mismatched']}"
    assert state["negative"] == [], f"a balance went below zero: {state['negative']}"


def _assert_events(workload: Workload, state: dict[str, Any]) -> None:
    """One signup per user, one grant per payment, the reversals the refunds imply, one
    `SubscriptionEvent` per Asaas event."""
    entries = state["entries"]
    kinds = Counter((kind, user) for kind, user, _key, _delta in entries)
    assert {user for (kind, user) in kinds if kind == "signup"} == set(workload.users)
    assert all(count == 1 for (kind, _user), count in kinds.items() if kind in ("signup", "grant")), kinds
    grants = {key for kind, _user, key, _delta in entries if kind == "grant"}
    assert grants == {f"grant:asaas:{payment}" for payment in workload.payment_ids()}, "one grant per payment"
    reversed_credits = Counter[str]()
    for kind, user, _key, delta in entries:
        if kind == "reversal":
            reversed_credits[user] -= delta
    assert dict(reversed_credits) == workload.reversed_credits, "reversals are not what the refunds imply"
    assert state["subscription_events"] == workload.subscription_events(), "one SubscriptionEvent per Asaas event"
