"""The one place a `CreditBalance` changes: the balance and its ledger entry, in one transaction.

`change_credits` marks the transaction as the service's (the trigger that records the app's own
changes as `external` entries skips it; a reversal's mark lets it past the overdraft guard of
migration 0007), moves the balance with one conditional UPDATE and appends the entry with the
balance it left: one statement. Writes that belong to the change (a debit's `UsageHistory` row,
its answer) ride in it as a `FollowUp`, selecting FROM the moved row. A new balance's starting
credits are the one other write here (`open_credit_balance`, `opening_credit_balance`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, overload

from sqlalchemy import CTE, ColumnElement, Integer, Select, Text, bindparam, func, inspect, select, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from models.app import CreditBalance, User
from models.base import constant, table_of, utcnow
from models.ids import cuid
from models.ledger import MAY_GO_NEGATIVE_SETTING, CreditLedgerEntry, LedgerKind
from worker.errors import LedgerKeyConflict, MissingBalance

LEDGER_WRITE_SETTING = "pedro_webhooks.ledger_write"  # read by the trigger (migration 0002)


@dataclass(frozen=True)
class LedgerChange:
    entry_id: int
    credit_balance_id: str
    delta: int
    balance_after: int


def _change_statement(
    *, with_floor: bool, may_go_negative: bool = False, follow_up: Callable[[CTE], Sequence[CTE]] | None = None
) -> Select[int, int | None]:
    """The balance move and its ledger entry as one statement, built once (Core constructs on the
    mapped tables, so the engine's schema_translate_map applies and the compiled form is cached).

        WITH moved AS (UPDATE "CreditBalance" SET ... WHERE id = :id AND <mark> = 'on'
                       [AND <may go negative mark> = 'on']
                       [AND "creditsRemaining" + :delta >= :floor] RETURNING ...),
             entry AS (INSERT INTO credit_ledger (...) SELECT ... FROM moved
                       ON CONFLICT (idempotency_key) DO NOTHING RETURNING id)
             [, <follow_up(moved)> ...]
        SELECT moved."creditsRemaining", entry.id FROM moved LEFT JOIN entry ON true

    No row: the floor refused the change (nothing written). A row whose entry id is NULL: the
    ledger key exists already (the balance moved; the caller's transaction must roll back).
    The follow-up's CTEs run whether or not the SELECT reads them (PostgreSQL always runs a
    data-modifying CTE); selecting FROM moved, they write nothing when the floor refused.
    """
    balance = table_of(CreditBalance)
    delta = bindparam("delta", type_=Integer)
    moved = (
        update(balance)
        .where(balance.c.id == bindparam("credit_balance_id", type_=Text), _service_write_mark())
        .values(
            {
                balance.c.creditsRemaining: balance.c.creditsRemaining + delta,
                balance.c.lastSyncedAt: bindparam("now", type_=balance.c.lastSyncedAt.type),
                balance.c.updatedAt: bindparam("now", type_=balance.c.updatedAt.type),
            }
        )
        .returning(balance.c.userId, balance.c.clerkUserId, balance.c.creditsRemaining)
    )
    if with_floor:
        moved = moved.where(balance.c.creditsRemaining + delta >= bindparam("floor", type_=Integer))
    if may_go_negative:
        moved = moved.where(_mark(MAY_GO_NEGATIVE_SETTING))
    moved_rows = moved.cte("moved")
    entry = _entry_of(moved_rows, bindparam("credit_balance_id", type_=Text), delta)
    statement = select(moved_rows.c.creditsRemaining, entry.c.id).select_from(moved_rows.outerjoin(entry, true()))
    if follow_up is not None:
        statement = statement.add_cte(*follow_up(moved_rows))
    return statement


@dataclass(frozen=True)
class FollowUp:
    """Writes that belong to a balance change and go in its statement (`follow_up`): every form
    of the statement (no floor, a floor, no floor and past the overdraft guard), built once."""

    plain: Select[int, int | None]
    with_floor: Select[int, int | None]
    may_go_negative: Select[int, int | None]


def follow_up(build: Callable[[CTE], Sequence[CTE]]) -> FollowUp:
    """`build(moved)` returns the CTEs to add: each selects FROM `moved` (the balance row the
    change wrote, RETURNING "userId", "clerkUserId", "creditsRemaining"), so it writes only
    when the balance moved. Their bound parameters must not be named as a column of a table
    they UPDATE (SQLAlchemy would SET that column from it) nor as this statement's own
    (`credit_balance_id`, `delta`, `now`, `floor`, `ledger_*`)."""
    return _forms(build)


def _forms(build: Callable[[CTE], Sequence[CTE]] | None) -> FollowUp:
    return FollowUp(
        plain=_change_statement(with_floor=False, follow_up=build),
        with_floor=_change_statement(with_floor=True, follow_up=build),
        may_go_negative=_change_statement(with_floor=False, may_go_negative=True, follow_up=build),
    )


@dataclass(frozen=True)
class Then:
    """A follow-up and the values of its parameters for one change."""

    writes: FollowUp
    params: Mapping[str, Any] = field(default_factory=dict)


def _service_write_mark() -> ColumnElement[bool]:
    """Marks the transaction as the service's within the statement that writes the balance (an
    InitPlan, run once before any row changes; set_config(..., true) lasts until the transaction
    ends), so the trigger (an AFTER ROW trigger, fired when the statement ends) skips this
    change, at no extra round trip, and no savepoint rollback can separate the mark from the
    write."""
    return _mark(LEDGER_WRITE_SETTING)


def _mark(setting: str) -> ColumnElement[bool]:
    """`(SELECT set_config(setting, 'on', true)) = 'on'`: sets a transaction-local mark before any
    row of the statement changes (the BEFORE ROW overdraft guard reads it too)."""
    return select(func.set_config(setting, "on", True)).scalar_subquery() == "on"


def _entry_of(
    written: CTE,
    credit_balance_id: ColumnElement[str],
    delta: ColumnElement[int],
    *,
    key: ColumnElement[str] | None = None,
) -> CTE:
    """The ledger entry of a balance row a CTE wrote (`written`: RETURNING "userId",
    "clerkUserId", "creditsRemaining"): INSERT ... SELECT ... FROM written ON CONFLICT
    (idempotency_key) DO NOTHING RETURNING id (its key `:ledger_key`, or `key`). No entry id: the
    key was there already. (Its parameters are named `ledger_*`: `kind` and `idempotency_key` are
    also columns of tables a follow-up may UPDATE.)"""
    ledger = table_of(CreditLedgerEntry)
    return (
        insert(ledger)
        .from_select(
            [
                "user_id",
                "clerk_user_id",
                "credit_balance_id",
                "delta",
                "balance_after",
                "kind",
                "idempotency_key",
                "reference",
            ],
            select(
                written.c.userId,
                written.c.clerkUserId,
                credit_balance_id,
                delta,
                written.c.creditsRemaining,
                bindparam("ledger_kind", type_=Text),
                bindparam("ledger_key", type_=Text) if key is None else key,
                bindparam("ledger_reference", type_=Text),
            ),
        )
        .on_conflict_do_nothing(index_elements=[ledger.c.idempotency_key])
        .returning(ledger.c.id)
        .cte("entry")
    )


_NO_FOLLOW_UP = _forms(None)
_BALANCE_MAPPER = inspect(CreditBalance)


@overload
def change_credits(
    session: Session,
    credit_balance_id: str,
    *,
    delta: int,
    kind: LedgerKind,
    idempotency_key: str,
    reference: str,
    floor: None = None,
    may_go_negative: bool = False,
    then: Then | None = None,
) -> LedgerChange: ...


@overload
def change_credits(
    session: Session,
    credit_balance_id: str,
    *,
    delta: int,
    kind: LedgerKind,
    idempotency_key: str,
    reference: str,
    floor: int,
    may_go_negative: Literal[False] = False,
    then: Then | None = None,
) -> LedgerChange | None: ...


def change_credits(
    session: Session,
    credit_balance_id: str,
    *,
    delta: int,
    kind: LedgerKind,
    idempotency_key: str,
    reference: str,
    floor: int | None = None,
    may_go_negative: bool = False,
    then: Then | None = None,
) -> LedgerChange | None:
    """Add `delta` (negative to take) to the balance and append its ledger entry.

    With `floor`, the change applies only if the balance stays at or above it (`floor=0`: never
    an overdraft) and None is returned otherwise; nothing is written then. Without it the change
    applies, but the database's overdraft guard refuses one that takes the balance below zero
    (`IntegrityError`, SQLSTATE 23514) unless `may_go_negative`: only a reversal of a grant and an
    operator's `--allow-negative` may go there. The caller makes sure the balance exists (a
    missing one raises `MissingBalance`) and that this change was not applied before (its own
    idempotency check); the unique `idempotency_key` is the last guard: a concurrent duplicate
    raises `LedgerKeyConflict` and the transaction rolls back.

    `then`: writes that belong to this change, in the same statement, done only if it applied.
    """
    if may_go_negative and floor is not None:
        raise ValueError("may_go_negative with a floor: a change with a floor never goes below it")
    if session.autoflush:
        session.flush()  # what an ORM statement's autoflush did: pending changes go first
    now = utcnow()
    params = {
        "credit_balance_id": credit_balance_id,
        "delta": delta,
        "now": now,
        "ledger_kind": kind.value,
        "ledger_key": idempotency_key,
        "ledger_reference": reference,
    }
    writes = _NO_FOLLOW_UP if then is None else then.writes
    if then is not None:
        params.update(then.params)
    if floor is not None:
        statement, params["floor"] = writes.with_floor, floor
    else:
        statement = writes.may_go_negative if may_go_negative else writes.plain
    row = session.execute(statement, params).one_or_none()
    if row is None:
        if floor is None:
            # No floor refuses anything: the balance row is not there.
            raise MissingBalance(credit_balance_id)
        return None
    balance_after, entry_id = row
    _sync_loaded_balance(session, credit_balance_id, balance_after, now)
    if entry_id is None:
        raise LedgerKeyConflict(idempotency_key)
    return LedgerChange(entry_id, credit_balance_id, delta, balance_after)


def _sync_loaded_balance(session: Session, credit_balance_id: str, balance_after: int, now: datetime) -> None:
    """Keep a `CreditBalance` object this session holds in step with the row, as an ORM-enabled
    UPDATE would (it synchronised the identity map): callers may read it after the change."""
    if not session.identity_map:
        return
    balance = session.identity_map.get(_BALANCE_MAPPER.identity_key_from_primary_key((credit_balance_id,)))
    if balance is not None:
        set_committed_value(balance, "credits_remaining", balance_after)
        set_committed_value(balance, "last_synced_at", now)
        set_committed_value(balance, "updated_at", now)


def open_credit_balance(session: Session, user: User, credits: int, *, reference: str) -> LedgerChange:
    """Create the balance of a user known to have none, with its starting credits and their
    `signup` entry: one statement (`_OPEN_WITH_SIGNUP`), no ORM object for the balance. (Clerk
    `user.created` opens it in its user's own statement: `opening_credit_balance`.)"""
    if session.autoflush:
        session.flush()  # what an ORM statement's autoflush did: pending changes (the user) first
    params = {"owner_id": user.id, "owner_clerk_id": user.clerk_id, **signup_params(credits, reference=reference)}
    row = session.execute(_OPEN_WITH_SIGNUP, params).one_or_none()
    if row is None:
        raise ValueError(f"user {user.id} has a credit balance already")
    credit_balance_id, balance_after, entry_id = row
    signup_entry = opened_credit_balance(user.id, credit_balance_id, entry_id)  # raises if its key existed
    assert signup_entry is not None  # the row is the balance just opened
    return LedgerChange(signup_entry, credit_balance_id, credits, balance_after)


@dataclass(frozen=True)
class Opening:
    """The CTEs that open a balance with its starting credits (`opening_credit_balance`)."""

    opened: CTE  # RETURNING id, "userId", "clerkUserId", "creditsRemaining"
    entry: CTE  # RETURNING id


def opening_credit_balance(owner: CTE) -> Opening:
    """For a statement that writes a user row (`owner`: a CTE RETURNING its id and "clerkId"):
    open that user's balance with its starting credits and their `signup` entry, unless it has
    one, in the same statement. Its parameters: `signup_params`. Read `opened.id` and `entry.id`
    with `opened_credit_balance`."""
    return _opening(owner.c.id, owner.c.clerkId, owner)


def signup_params(credits: int, *, reference: str) -> dict[str, Any]:
    """The values of an opening's parameters (besides its owner)."""
    return {
        "new_balance_id": cuid(),
        "credits": credits,
        "now": utcnow(),
        "ledger_kind": LedgerKind.SIGNUP.value,
        "ledger_reference": reference,
    }


def opened_credit_balance(user_id: str, credit_balance_id: str | None, entry_id: int | None) -> int | None:
    """The `signup` entry's id if an opening opened the balance; None if the user had one. A
    balance opened without its entry means the `signup` ledger key existed already:
    `LedgerKeyConflict`, and the transaction rolls back."""
    if credit_balance_id is None:
        return None
    if entry_id is None:
        raise LedgerKeyConflict(f"{_SIGNUP_KEY_PREFIX}{user_id}")
    return entry_id


_SIGNUP_KEY_PREFIX = f"{LedgerKind.SIGNUP.value}:"


def _opening(owner_id: ColumnElement[str], owner_clerk_id: ColumnElement[str], owner: CTE | None) -> Opening:
    """A new balance with its starting credits and their ledger entry, unless the user has one:

        opened AS (INSERT INTO "CreditBalance" (...) SELECT ... [FROM owner] WHERE <mark>
                   ON CONFLICT ("userId") DO NOTHING RETURNING ...),
        entry AS (INSERT INTO credit_ledger (...) SELECT ... FROM opened ... RETURNING id)

    The entry's key is 'signup:' || the user's id. The mark keeps the trigger from recording the
    insert as an external change, as in `change_credits`."""
    balance = table_of(CreditBalance)
    now = bindparam("now", type_=balance.c.createdAt.type)
    credits = bindparam("credits", type_=Integer)
    row = select(bindparam("new_balance_id", type_=Text), owner_id, owner_clerk_id, credits, now, now, now)
    if owner is not None:
        row = row.select_from(owner)
    opened = (
        insert(balance)
        .from_select(
            ["id", "userId", "clerkUserId", "creditsRemaining", "lastSyncedAt", "createdAt", "updatedAt"],
            row.where(_service_write_mark()),
        )
        .on_conflict_do_nothing(index_elements=[balance.c.userId])
        .returning(balance.c.id, balance.c.userId, balance.c.clerkUserId, balance.c.creditsRemaining)
        .cte("opened")
    )
    key = constant(_SIGNUP_KEY_PREFIX) + opened.c.userId
    return Opening(opened, _entry_of(opened, opened.c.id, credits, key=key))


def _open_with_signup_statement() -> Select[str, int, int | None]:
    """The opening on its own, for a user known by id (built once): no row if it had a balance.

    WITH opened AS (...), entry AS (...)
    SELECT opened.id, opened."creditsRemaining", entry.id FROM opened LEFT JOIN entry ON true"""
    opening = _opening(bindparam("owner_id", type_=Text), bindparam("owner_clerk_id", type_=Text), None)
    opened, entry = opening.opened, opening.entry
    return select(opened.c.id, opened.c.creditsRemaining, entry.c.id).select_from(opened.outerjoin(entry, true()))


_OPEN_WITH_SIGNUP = _open_with_signup_statement()
