"""The user a billing event belongs to, as far as this database knows it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.app import CreditBalance, User
from models.locks import lock_names, user_lock


@dataclass(frozen=True)
class Account:
    clerk_user_id: str
    user_id: str
    credit_balance_id: str | None  # None: the user exists but has no balance yet


def find_account(session: Session, clerk_user_id: str) -> Account | None:
    """The user's account, read under the user's lock, held until this transaction ends.

    Clerk `user.created` takes the same lock, so an event that finds no account here is
    committed as `unmatched` before the new user's replay looks for waiting events, or waits and
    then sees the committed user: an unmatched event is never missed by that replay.
    """
    lock_names(session, user_lock(clerk_user_id))
    row = session.execute(
        select(User.id, CreditBalance.id)
        .outerjoin(CreditBalance, CreditBalance.user_id == User.id)
        .where(User.clerk_id == clerk_user_id)
    ).one_or_none()
    if row is None:
        return None
    return Account(clerk_user_id, row[0], row[1])
