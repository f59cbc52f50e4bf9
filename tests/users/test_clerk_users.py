"""Clerk user.created / user.updated / user.deleted through the inbox pipeline."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select, text

from models.app import CreditBalance, User
from models.ledger import CreditLedgerEntry
from tests.support.inbox import (
    assert_ledger_matches_balances,
    clerk_user_event,
    deliver,
    inbox_row,
    payload,
    process,
    store,
)

CLERK_ID = "user_29w83sxmDNGwOuEthce5gg56FcC"
CREATED_AT = 1654012591835  # data.updated_at of the documented user.created


@pytest.fixture(autouse=True)
def invariant(session_factory):
    yield
    assert_ledger_matches_balances(session_factory)


def _user(session, clerk_id=CLERK_ID) -> User | None:
    session.expire_all()
    return session.scalar(select(User).where(User.clerk_id == clerk_id))


def test_user_created_makes_user_balance_and_signup_entry(session_factory, session):
    row = deliver(session_factory, "clerk", payload("clerk/user.created"))
    assert (row.status, row.attempts) == ("processed", 1)
    user = _user(session)
    assert (user.email, user.name, user.is_active) == ("example@example.org", "Example Example", True)
    balance = session.scalar(select(CreditBalance).where(CreditBalance.user_id == user.id))
    assert (balance.clerk_user_id, balance.credits_remaining) == (CLERK_ID, 100)
    entries = session.scalars(select(CreditLedgerEntry)).all()
    assert [(e.kind, e.delta, e.balance_after) for e in entries] == [("signup", 100, 100)]


def test_processing_the_same_row_twice_changes_nothing(session_factory, session):
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    assert process(inbox_id)["status"] == "processed"
    assert process(inbox_id)["status"] == "processed"  # already done: returns, no effect
    assert inbox_row(session_factory, inbox_id).attempts == 1
    assert session.scalar(text("SELECT count(*) FROM ingest.credit_ledger")) == 1


def test_newer_update_wins_and_older_is_skipped(session_factory, session):
    deliver(session_factory, "clerk", payload("clerk/user.created"))
    deliver(session_factory, "clerk", clerk_user_event("user.updated", CLERK_ID, CREATED_AT + 2000, first_name="New"))
    older = deliver(
        session_factory, "clerk", clerk_user_event("user.updated", CLERK_ID, CREATED_AT + 1000, first_name="Old")
    )
    assert older.status == "processed" and "skipped" in older.detail
    assert _user(session).name == "New Example"


def test_update_before_create_creates_the_user_once(session_factory, session):
    deliver(session_factory, "clerk", payload("clerk/user.updated"))  # updated_at ...824306
    deliver(session_factory, "clerk", payload("clerk/user.created"))  # older: ...591835
    user = _user(session)
    assert user.name == "Changed Example"
    assert session.scalar(text('SELECT count(*) FROM "CreditBalance"')) == 1
    assert session.scalar(text("SELECT count(*) FROM ingest.credit_ledger")) == 1


def test_name_falls_back_to_username_and_may_be_null(session_factory, session):
    deliver(
        session_factory,
        "clerk",
        clerk_user_event("user.created", "user_a", 1, first_name=None, last_name=None, username="ana"),
    )
    deliver(
        session_factory,
        "clerk",
        clerk_user_event(
            "user.created",
            "user_b",
            1,
            first_name=None,
            last_name=None,
            username=None,
            email_addresses=[],
            primary_email_address_id=None,
        ),
    )
    assert _user(session, "user_a").name == "ana"
    user_b = _user(session, "user_b")
    assert (user_b.name, user_b.email) == (None, None)


def test_email_moved_to_another_account_is_released_by_the_stale_holder(session_factory, session):
    deliver(session_factory, "clerk", clerk_user_event("user.created", "user_old", 1))
    deliver(session_factory, "clerk", clerk_user_event("user.created", "user_new", 2))
    assert _user(session, "user_old").email is None
    assert _user(session, "user_new").email == "example@example.org"


def test_deleted_user_is_deactivated_kept_and_never_resurrected(session_factory, session):
    deliver(session_factory, "clerk", payload("clerk/user.created"))
    row = deliver(session_factory, "clerk", payload("clerk/user.deleted"))
    assert (row.status, row.detail) == ("processed", "user deactivated")
    late = deliver(
        session_factory, "clerk", clerk_user_event("user.updated", CLERK_ID, CREATED_AT + 5, first_name="Late")
    )
    assert late.detail == "user deleted in Clerk: kept inactive"
    user = _user(session)
    assert user.is_active is False and user.name == "Late Example"
    assert session.scalar(text('SELECT count(*) FROM "CreditBalance"')) == 1


def test_deleted_user_never_takes_an_email_from_a_live_user(session_factory, session):
    deliver(session_factory, "clerk", clerk_user_event("user.created", "user_gone", 1, email_addresses=[]))
    deliver(session_factory, "clerk", clerk_user_event("user.deleted", "user_gone", 0))
    deliver(session_factory, "clerk", clerk_user_event("user.created", "user_live", 1))
    deliver(session_factory, "clerk", clerk_user_event("user.updated", "user_gone", 2))  # delayed
    assert _user(session, "user_live").email == "example@example.org"
    assert _user(session, "user_gone").email is None


def _final_state(session) -> tuple:
    session.expire_all()
    user = session.execute(text('SELECT "clerkId", email, name, "isActive" FROM "User"')).all()
    balances = session.execute(text('SELECT "creditsRemaining" FROM "CreditBalance"')).scalars().all()
    ledger = session.execute(text("SELECT kind, delta FROM ingest.credit_ledger")).all()
    return [tuple(u) for u in user], balances, [tuple(e) for e in ledger]


@pytest.mark.parametrize("order", list(itertools.permutations(["user.created", "user.updated", "user.deleted"])))
def test_every_order_of_created_updated_deleted_ends_in_the_same_state(session_factory, session, order):
    for event_type in order:
        deliver(session_factory, "clerk", payload(f"clerk/{event_type}"))
    assert _final_state(session) == (
        [(CLERK_ID, "example@example.org", "Changed Example", False)],
        [100],
        [("signup", 100)],
    )


@pytest.mark.parametrize(
    "event_type, data",
    [
        ("user.created", {"email_addresses": []}),
        ("user.deleted", {"deleted": True}),
        ("user.updated", {"id": "user_x"}),
    ],
)
def test_a_payload_that_can_never_succeed_fails_at_once(session_factory, event_type, data):
    row = deliver(session_factory, "clerk", {"type": event_type, "object": "event", "data": data})
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error.startswith("PermanentError: data.")


def test_unknown_clerk_type_is_ignored_and_replayable(session_factory):
    row = deliver(session_factory, "clerk", {"type": "organization.created", "data": {"id": "org_1"}})
    assert row.status == "ignored" and "no handler" in row.detail


def test_a_new_user_takes_five_statements(session_factory):
    """The row's lock, the run's start, the version claim (with the user's lock), the user with
    its balance and signup entry, and the row's final state with the replay of waiting billing
    events: each a statement that does what no other can (BEGIN and COMMIT aside)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    deliver(session_factory, "clerk", clerk_user_event("user.created", "user_warm", CREATED_AT))  # compiles
    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(Engine, "before_cursor_execute", listener)
    try:
        assert process(inbox_id)["status"] == "processed"
    finally:
        event.remove(Engine, "before_cursor_execute", listener)
    assert len(statements) == 5, statements
    with session_factory() as session:
        user = _user(session)
        assert user is not None and user.credit_balance is not None
        assert user.credit_balance.credits_remaining == session.scalar(
            select(CreditLedgerEntry.delta).where(CreditLedgerEntry.user_id == user.id)
        )
