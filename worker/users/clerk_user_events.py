"""Clerk `user.created`, `user.updated` and `user.deleted`: the `User` row and its first credits.

Clerk delivers at least once and in no particular order, so:
- last-write-wins on `data.updated_at` (ms), remembered per user in `user_sync_state`: an older
  event never overwrites a newer one, and an update that arrives before its create still
  creates the user;
- `user.deleted` leaves a tombstone there: nothing that arrives later brings the user back
  (delayed events may still complete its data, but it stays inactive), so every order of the
  same events ends in the same state.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, CursorResult, Select, Text, bindparam, func, null, select, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from models.app import User
from models.base import table_of, utcnow
from models.ids import cuid
from models.locks import lock_first, user_lock
from models.settings import process_settings
from models.user_sync import UserSyncState
from worker.credits.ledger import opened_credit_balance, opening_credit_balance, signup_params
from worker.errors import PermanentError
from worker.registry import Delivery, Outcome, handles


@handles("clerk", "user.created", "user.updated")
def sync_user(session: Session, delivery: Delivery) -> Outcome:
    data = _data(delivery)
    clerk_id = _required_str(data, "id")
    version = data.get("updated_at") or data.get("created_at")
    if not isinstance(version, int):
        raise PermanentError("data.updated_at (ms) is missing or not an integer")
    deleted = _claim_version(session, clerk_id, version)
    if deleted is None:
        return Outcome.processed("skipped: a newer version of this user was already applied")
    email = primary_email(data)
    if deleted:
        email = _email_if_free(session, email, clerk_id)
    credits = process_settings().signup_credits
    signup = signup_params(credits, reference=f"clerk {delivery.external_id}")
    name = display_name(data)
    if _upsert_user_opening_balance(session, clerk_id, email=email, name=name, deleted=deleted, signup=signup):
        # Billing events that arrived before the user waited as `unmatched`: the pipeline
        # replays them once this commits.
        return Outcome.processed(f"user created with {credits} signup credits", unblocks_user=clerk_id)
    return Outcome.processed("user deleted in Clerk: kept inactive" if deleted else None)


@handles("clerk", "user.deleted")
def deactivate_user(session: Session, delivery: Delivery) -> Outcome:
    clerk_id = _required_str(_data(delivery), "id")
    tombstone = insert(UserSyncState).values(clerk_user_id=clerk_id, last_updated_at_ms=0, deleted_at=func.now())
    session.execute(
        tombstone.on_conflict_do_update(
            index_elements=[UserSyncState.clerk_user_id],
            set_={"deleted_at": func.coalesce(UserSyncState.deleted_at, func.now()), "updated_at": func.now()},
        )
    )
    # Keep every row: UsageHistory's RESTRICT key forbids a hard delete, and history matters.
    result = session.execute(
        update(User)
        .where(User.clerk_id == clerk_id, User.is_active.is_(True))
        .values(is_active=False, updated_at=utcnow())
    )
    # An UPDATE without RETURNING gives a CursorResult (Session.execute is typed as any Result).
    assert isinstance(result, CursorResult)
    return Outcome.processed("user deactivated" if result.rowcount else "no active user to deactivate")


def primary_email(data: dict[str, Any]) -> str | None:
    primary_id = data.get("primary_email_address_id")
    for address in data.get("email_addresses") or []:
        if isinstance(address, dict) and address.get("id") == primary_id:
            value = address.get("email_address")
            return value if isinstance(value, str) and value else None
    return None


def display_name(data: dict[str, Any]) -> str | None:
    parts = [data.get("first_name"), data.get("last_name")]
    full = " ".join(part.strip() for part in parts if isinstance(part, str) and part.strip())
    username = data.get("username")
    return full or (username if isinstance(username, str) and username else None)


def _claim_version(session: Session, clerk_id: str, version: int) -> bool | None:
    """Take the user's lock, then record `version` as the newest seen for this user.

    The lock (`user_lock`) is the one billing events take while deciding whether this user
    exists (billing/accounts.py); it is held from here to the end of the transaction. None if
    the version is not newer than what was applied; otherwise whether the user is deleted (a
    deleted user's data may still be completed by events that were delayed, but it stays
    inactive, so every order of the same events ends in the same state). One upsert: its row
    lock also serialises concurrent events for the same user.
    """
    values = {"lock_name": user_lock(clerk_id), "clerk_user_id": clerk_id, "version": version}
    return session.execute(_CLAIM_VERSION, values).scalar_one_or_none()


def _claim_version_statement() -> ReturningInsert[bool]:
    """WITH locked AS (SELECT pg_advisory_xact_lock(...)) INSERT ... SELECT ... FROM locked
    ON CONFLICT DO UPDATE ... WHERE <newer> RETURNING ...: the row to insert comes from the lock's
    CTE, so the lock is taken before the row is written, in the same round trip."""
    sync_state = table_of(UserSyncState)  # Core on the table: no ORM bulk-insert machinery
    locked = lock_first(bindparam("lock_name", type_=Text))
    statement = insert(sync_state).from_select(
        ["clerk_user_id", "last_updated_at_ms"],
        select(bindparam("clerk_user_id", type_=Text), bindparam("version", type_=BigInteger)).select_from(locked),
    )
    return statement.on_conflict_do_update(
        index_elements=[sync_state.c.clerk_user_id],
        set_={"last_updated_at_ms": statement.excluded.last_updated_at_ms, "updated_at": func.now()},
        where=sync_state.c.last_updated_at_ms < statement.excluded.last_updated_at_ms,
    ).returning(sync_state.c.deleted_at.is_not(None))


def _email_if_free(session: Session, email: str | None, clerk_id: str) -> str | None:
    """The email a deleted user may hold: never one a live user has."""
    if email is None:
        return None
    users = table_of(User)
    held_elsewhere = (users.c.email == email) & (users.c.clerkId != clerk_id)
    return None if session.scalar(select(users.c.id).where(held_elsewhere)) else email


def _upsert_user_opening_balance(
    session: Session, clerk_id: str, *, email: str | None, name: str | None, deleted: bool, signup: dict[str, Any]
) -> bool:
    """Insert or update the user's row and open its credit balance with the signup credits
    (`signup`: `signup_params`) unless it has one, in one statement; True if the balance was
    opened. Core, no ORM object: this is every `user.created`'s path. A live user takes its
    email: Clerk moved the address from another account, so the stale holder's copy is cleared
    in the same statement (`_UPSERT_USER_TAKING_EMAIL`)."""
    values = {
        "new_id": cuid(),
        "clerk_user_id": clerk_id,
        "new_email": email,
        "new_name": name,
        "active": not deleted,
        **signup,
    }
    statement = _UPSERT_USER if deleted or email is None else _UPSERT_USER_TAKING_EMAIL
    user_id, credit_balance_id, entry_id = session.execute(statement, values).one()
    return opened_credit_balance(user_id, credit_balance_id, entry_id) is not None


def _upsert_user_statement(*, taking_email: bool) -> Select[str, str | None, int | None]:
    """The user's upsert, and its balance opened from the row it returns (`opening_credit_balance`):

        WITH upserted AS (INSERT INTO "User" (...) SELECT ... ON CONFLICT ("clerkId") DO UPDATE ...
                          RETURNING id, "clerkId"),
             opened AS (...), entry AS (...)
        SELECT upserted.id, opened.id, entry.id FROM upserted LEFT JOIN opened ... LEFT JOIN entry ...

    Taking the email:

        WITH cleared AS (UPDATE "User" SET email = NULL ... WHERE email = :email AND "clerkId" <> :clerk_id)
        INSERT INTO "User" (...) SELECT ... WHERE (SELECT count(*) FROM cleared) IS NOT NULL ...

    The count (run once, before the row is produced) makes the stale holder's email cleared
    before this row is written, so the unique email index never sees the address twice: a
    sibling CTE nobody reads would run after the INSERT."""
    users = table_of(User)
    now = bindparam("now", type_=users.c.createdAt.type)
    # No parameter is named as a column of "User": SQLAlchemy would read such a key as a value to
    # SET in the UPDATE below.
    clerk_id, email = bindparam("clerk_user_id", type_=Text), bindparam("new_email", type_=Text)
    row = select(
        bindparam("new_id", type_=Text),
        clerk_id,
        email,
        bindparam("new_name", type_=Text),
        bindparam("active", type_=Boolean),
        now,
        now,
    )
    if taking_email:
        cleared = (
            update(users)
            .where(users.c.email == email, users.c.clerkId != clerk_id)
            .values(email=null(), updatedAt=now)
            .returning(users.c.id)
            .cte("cleared")
        )
        row = row.where(select(func.count()).select_from(cleared).scalar_subquery().is_not(None))
    statement = insert(users).from_select(["id", "clerkId", "email", "name", "isActive", "createdAt", "updatedAt"], row)
    new = statement.excluded
    upserted = (
        statement.on_conflict_do_update(
            index_elements=[users.c.clerkId],
            # A deleted user's update makes it inactive; no update makes a user active again.
            set_={
                "email": new.email,
                "name": new.name,
                "updatedAt": new.updatedAt,
                "isActive": users.c.isActive & new.isActive,
            },
        )
        .returning(users.c.id, users.c.clerkId)
        .cte("upserted")
    )
    opening = opening_credit_balance(upserted)
    opened, entry = opening.opened, opening.entry
    return select(upserted.c.id, opened.c.id.label("credit_balance_id"), entry.c.id.label("entry_id")).select_from(
        upserted.outerjoin(opened, true()).outerjoin(entry, true())
    )


# Built once (compiled once, cached): every user.created and user.updated runs both.
_CLAIM_VERSION = _claim_version_statement()
_UPSERT_USER = _upsert_user_statement(taking_email=False)
_UPSERT_USER_TAKING_EMAIL = _upsert_user_statement(taking_email=True)


def _data(delivery: Delivery) -> dict[str, Any]:
    data = delivery.payload.get("data")
    if not isinstance(data, dict):
        raise PermanentError("payload has no `data` object")
    return data


def _required_str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise PermanentError(f"data.{key} is missing")
    return value
