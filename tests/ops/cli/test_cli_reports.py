"""`report users-by-day|operations|low-balance|credits-flow` on a known data set print the known
numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from models.app import CreditBalance, OperationType, UsageHistory, User
from models.ledger import CreditLedgerEntry
from tests.support.cli import invoke

DAY1, DAY2, DAY3 = datetime(2026, 11, 1, 9), datetime(2026, 11, 2, 23, 59), datetime(2026, 11, 4, 0, 1)


@pytest.fixture
def known_data(session_factory):
    """Six users over three days; balances 0..50 (one user inactive); usage of two operations
    with one refund; ledger entries of four kinds over two days."""
    users = [
        ("user_a", DAY1, 0, True),
        ("user_b", DAY1, 5, True),
        ("user_c", DAY2, 9, True),
        ("user_d", DAY3, 10, True),
        ("user_e", DAY3, 50, True),
        ("user_f", DAY3, 3, False),
    ]
    with session_factory.begin() as session:
        balances = {}
        for clerk_id, created, credits, active in users:
            user = User(clerk_id=clerk_id, email=f"{clerk_id}@example.org", is_active=active, created_at=created)
            session.add(user)
            session.flush()
            balances[clerk_id] = CreditBalance(user_id=user.id, clerk_user_id=clerk_id, credits_remaining=credits)
            session.add(balances[clerk_id])
        session.flush()
        e = balances["user_e"]
        for operation, credits in [
            ("AI_TEXT_CHAT", 1),
            ("AI_TEXT_CHAT", 1),
            ("AI_TEXT_CHAT", 2),
            ("AI_IMAGE_GENERATION", 10),
            ("AI_IMAGE_GENERATION", 10),
            ("AI_IMAGE_GENERATION", -10),
        ]:
            session.add(
                UsageHistory(
                    user_id=e.user_id,
                    credit_balance_id=e.id,
                    operation_type=OperationType(operation),
                    credits_used=credits,
                    timestamp=DAY3,
                )
            )
        for n, (day, kind, delta) in enumerate(
            [
                ("2026-10-01 10:00+00", "grant", 500),
                ("2026-10-01 11:00+00", "usage", -10),
                ("2026-10-01 23:30+00", "usage", -2),
                ("2026-10-03 00:10+00", "reversal", -150),
                ("2026-10-03 01:00+00", "refund", 10),
                ("2026-10-03 02:00+00", "grant", 100),
            ]
        ):
            session.add(
                CreditLedgerEntry(
                    user_id=e.user_id,
                    clerk_user_id="user_e",
                    credit_balance_id=e.id,
                    delta=delta,
                    balance_after=0,
                    kind=kind,
                    idempotency_key=f"k{n}",
                    reference="report test",
                    created_at=datetime.fromisoformat(day),
                )
            )


def _json(*args: str):
    result = invoke("report", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_users_by_day(known_data):
    assert _json("users-by-day") == [
        {"day": "2026-11-01", "new_users": 2, "total_users": 2},
        {"day": "2026-11-02", "new_users": 1, "total_users": 3},
        {"day": "2026-11-04", "new_users": 3, "total_users": 6},
    ]
    assert _json("users-by-day", "--since", "2026-11-02")[0] == {"day": "2026-11-02", "new_users": 1, "total_users": 3}
    table = invoke("report", "users-by-day").output.splitlines()
    assert table[0].split() == ["day", "new", "users", "total"] and table[3].split() == ["2026-11-04", "3", "6"]


def test_operations(known_data):
    assert _json("operations") == [
        {"operation": "AI_TEXT_CHAT", "uses": 3, "credits": 4, "average_credits": 1.33, "refunded": 0},
        {"operation": "AI_IMAGE_GENERATION", "uses": 2, "credits": 20, "average_credits": 10, "refunded": 10},
    ]
    assert _json("operations", "--since", "2026-11-05") == []


def test_low_balance(known_data):
    assert [(r["clerk_user_id"], r["credits"]) for r in _json("low-balance")] == [
        ("user_a", 0),
        ("user_b", 5),
        ("user_c", 9),  # user_f (3) is inactive; user_d has exactly 10
    ]
    assert [r["clerk_user_id"] for r in _json("low-balance", "--threshold", "1")] == ["user_a"]


def test_credits_flow(known_data):
    flow = _json("credits-flow")
    today = datetime.now(UTC).date().isoformat()
    columns = ("day", "grant", "usage", "reversal", "refund", "external", "net")
    assert [tuple(d[c] for c in columns) for d in flow] == [
        ("2026-10-01", 500, -12, 0, 0, 0, 488),
        ("2026-10-03", 100, 0, -150, 10, 0, -40),
        # The balances were inserted directly today: the trigger recorded them as `external`.
        (today, 0, 0, 0, 0, 0 + 5 + 9 + 10 + 50 + 3, 77),
    ]
    assert [d["day"] for d in _json("credits-flow", "--since", "2026-10-02")] == ["2026-10-03", today]
    assert _json("credits-flow", "--since", "2026-10-02T00:00") == flow[1:]
