"""The ledger: one function changes balances; the database keeps the ledger append-only and
records the Next.js app's own changes, so sum(ledger) == creditsRemaining whoever writes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from models.app import CreditBalance, User
from models.ledger import CreditLedgerEntry, LedgerKind
from tests.support.inbox import assert_ledger_matches_balances, ledger_sum
from worker.credits.ledger import change_credits, open_credit_balance
from worker.errors import LedgerKeyConflict


def _new_user(session, clerk_id="user_l", credits=100) -> CreditBalance:
    user = User(clerk_id=clerk_id)
    session.add(user)
    session.flush()
    change = open_credit_balance(session, user, credits, reference="test")
    return session.get(CreditBalance, change.credit_balance_id)


def test_change_credits_moves_balance_and_appends_entry(session):
    balance = _new_user(session)
    change = change_credits(
        session, balance.id, delta=-30, kind=LedgerKind.USAGE, idempotency_key="k1", reference="debit k1", floor=0
    )
    session.commit()
    assert change.balance_after == 70
    assert session.scalar(select(CreditBalance.credits_remaining)) == 70
    assert ledger_sum(session, balance.user_id) == 70
    entry = session.scalar(select(CreditLedgerEntry).where(CreditLedgerEntry.idempotency_key == "k1"))
    assert (entry.kind, entry.delta, entry.balance_after, entry.reference) == ("usage", -30, 70, "debit k1")


def test_floor_refuses_an_overdraft_and_writes_nothing(session):
    balance = _new_user(session, credits=5)
    assert (
        change_credits(
            session, balance.id, delta=-6, kind=LedgerKind.USAGE, idempotency_key="k2", reference="x", floor=0
        )
        is None
    )
    session.commit()
    assert session.scalar(select(CreditBalance.credits_remaining)) == 5
    assert session.scalar(text("SELECT count(*) FROM ingest.credit_ledger")) == 1  # signup only


def test_reversals_may_go_below_zero_without_a_floor(session):
    balance = _new_user(session, credits=5)
    change = change_credits(
        session,
        balance.id,
        delta=-50,
        kind=LedgerKind.REVERSAL,
        idempotency_key="r1",
        reference="refund",
        may_go_negative=True,  # past the overdraft guard (tests/credits/test_overdraft_guard.py)
    )
    assert change.balance_after == -45


def test_reused_key_raises_and_rolls_back(session, session_factory):
    balance = _new_user(session)
    change_credits(session, balance.id, delta=10, kind=LedgerKind.GRANT, idempotency_key="g", reference="p")
    session.commit()
    before = _balance_and_ledger(session_factory)
    assert before == (110, [("signup", 100, 100, f"signup:{balance.user_id}"), ("grant", 10, 110, "g")])
    with pytest.raises(LedgerKeyConflict):
        change_credits(session, balance.id, delta=10, kind=LedgerKind.GRANT, idempotency_key="g", reference="p")
    session.rollback()  # what the caller's transaction does with the error
    assert _balance_and_ledger(session_factory) == before  # the balance move went with it
    assert session.scalar(select(CreditBalance.credits_remaining)) == 110 == ledger_sum(session, balance.user_id)


def _balance_and_ledger(factory) -> tuple[int, list[tuple]]:
    """The balance and every ledger entry (kind, delta, balance_after, key), read afresh."""
    with factory() as session:
        remaining = session.scalar(select(CreditBalance.credits_remaining))
        entries = session.execute(
            select(
                CreditLedgerEntry.kind,
                CreditLedgerEntry.delta,
                CreditLedgerEntry.balance_after,
                CreditLedgerEntry.idempotency_key,
            ).order_by(CreditLedgerEntry.id)
        ).all()
    return remaining, [tuple(entry) for entry in entries]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ingest.credit_ledger SET delta = delta + 1",
        "DELETE FROM ingest.credit_ledger",
    ],
)
def test_the_database_refuses_to_change_ledger_rows(session, statement):
    _new_user(session)
    session.commit()
    with pytest.raises(DBAPIError, match="append-only"):
        session.execute(text(statement))
    session.rollback()


def test_app_writes_through_prisma_are_recorded_as_external_entries(session_factory):
    # What the seed's Next.js code does: create the balance with its default, then decrement.
    with session_factory.begin() as session:
        session.execute(
            text(
                'INSERT INTO "User" (id, "clerkId", "updatedAt") VALUES (\'u1\', \'user_app\', now());'
                'INSERT INTO "CreditBalance" (id, "userId", "clerkUserId", "updatedAt") '
                "VALUES ('b1', 'u1', 'user_app', now())"
            )
        )
    with session_factory.begin() as session:
        session.execute(text('UPDATE "CreditBalance" SET "creditsRemaining" = "creditsRemaining" - 7'))
        session.execute(text('UPDATE "CreditBalance" SET "lastSyncedAt" = now()'))  # no credit change
    with session_factory() as session:
        entries = session.execute(
            text("SELECT kind, delta, balance_after, idempotency_key FROM ingest.credit_ledger ORDER BY id")
        ).all()
    assert [tuple(e) for e in entries] == [("external", 100, 100, None), ("external", -7, 93, None)]
    assert_ledger_matches_balances(session_factory)


def test_service_changes_are_not_counted_twice(session_factory):
    with session_factory.begin() as session:
        balance = _new_user(session)
        change_credits(session, balance.id, delta=-1, kind=LedgerKind.USAGE, idempotency_key="u", reference="x")
    with session_factory() as session:
        kinds = session.scalars(text("SELECT kind FROM ingest.credit_ledger ORDER BY id")).all()
    assert kinds == ["signup", "usage"]
    assert_ledger_matches_balances(session_factory)


writes = st.lists(
    st.tuples(st.sampled_from(["service", "service_floor", "service_reversal", "app"]), st.integers(-60, 60)),
    min_size=1,
    max_size=15,
)


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=writes)
def test_invariant_holds_under_any_mix_of_writers(session_factory, writes):
    """And no writer but a marked reversal takes the balance below zero (the overdraft guard)."""
    with session_factory.begin() as session:
        session.execute(text('TRUNCATE "User", "CreditBalance", ingest.credit_ledger CASCADE'))
        balance_id = _new_user(session, credits=50).id
    for number, (writer, delta) in enumerate(writes):
        before = _balance_and_ledger(session_factory)[0]
        refused_by_guard = writer in ("app", "service") and delta < 0 and before + delta < 0
        try:
            _write(session_factory, balance_id, writer, delta, f"h{number}")
        except DBAPIError as exc:
            assert refused_by_guard and "pedro_webhooks_no_overdraft" in str(exc), (writer, delta, before)
            assert _balance_and_ledger(session_factory)[0] == before
        else:
            assert not refused_by_guard, (writer, delta, before)
    assert_ledger_matches_balances(session_factory)


def _write(session_factory, balance_id: str, writer: str, delta: int, key: str) -> None:
    with session_factory.begin() as session:
        if writer == "app":
            session.execute(
                text('UPDATE "CreditBalance" SET "creditsRemaining" = "creditsRemaining" + :d'), {"d": delta}
            )
            return
        change_credits(
            session,
            balance_id,
            delta=delta,
            kind=LedgerKind.ADJUSTMENT,
            idempotency_key=key,
            reference="hypothesis",
            floor=0 if writer == "service_floor" else None,
            may_go_negative=writer == "service_reversal",
        )
