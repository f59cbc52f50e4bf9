"""Transaction-scoped advisory locks on names: what two transactions must not decide at once.

PostgreSQL releases them when the transaction ends (commit, rollback, or a dropped connection),
so a killed process never leaves one behind, and they work behind PgBouncer in transaction mode.
A name is hashed to the lock's 64-bit key (`hashtextextended`); names carry a kind prefix
(`user:`, `asaas-link:`, `inbox:`) so different kinds never share a key by construction.
"""

from __future__ import annotations

from sqlalchemy import CTE, ColumnElement, Text, bindparam, func, select
from sqlalchemy.orm import Session

_INBOX_ROW = "inbox:"


def lock_names(session: Session, *names: str) -> None:
    """Wait for and take the locks on `names`, in sorted order: every caller takes them in the
    same order, so two transactions locking overlapping names never deadlock."""
    for name in sorted(set(names)):
        session.execute(_LOCK, {"name": name})


def lock_first(name: ColumnElement[str]) -> CTE:
    """The lock on `name` as a CTE: a statement that takes its input rows FROM it waits for and
    takes the lock before it writes anything, in its own round trip (`lock_names` costs one
    more). For one name; `lock_names` orders several."""
    return select(_lock_clause(name).label("locked")).cte("locked")


def try_lock_name(session: Session, name: str) -> bool:
    """Take the lock on `name` if nobody holds it; False (without waiting) if someone does."""
    return bool(session.scalar(_TRY_LOCK, {"name": name}))


def _lock_clause(name: str | ColumnElement[str]) -> ColumnElement[None]:
    """`pg_advisory_xact_lock` on a name: waits for the lock, held until the transaction ends."""
    return func.pg_advisory_xact_lock(func.hashtextextended(name, 0))


def try_lock_clause(name: str | ColumnElement[str]) -> ColumnElement[bool]:
    """`pg_try_advisory_xact_lock` on a name, as SQL: usable per row in a WHERE clause."""
    return func.pg_try_advisory_xact_lock(func.hashtextextended(name, 0))


# Built once with the name as a parameter: every event takes these, and building the statement
# each time cost more than sending it.
_NAME = bindparam("name", type_=Text)
_LOCK = select(_lock_clause(_NAME))
_TRY_LOCK = select(try_lock_clause(_NAME))


def user_lock(clerk_user_id: str) -> str:
    """Held while deciding whether a user exists (a billing event) and while creating one (Clerk
    `user.created`): a billing event then either sees the committed user, or is committed as
    `unmatched` before the user's replay looks for it (issue 9's unmatched race)."""
    return f"user:{clerk_user_id}"


def asaas_link_lock(kind: str, external_id: str) -> str:
    """Held while resolving an Asaas customer/subscription id to a user, and while learning it."""
    return f"asaas-link:{kind}:{external_id}"


def inbox_row_lock(inbox_id: int) -> str:
    """Held by the run processing an inbox row for its whole transaction."""
    return f"{_INBOX_ROW}{inbox_id}"


def inbox_row_lock_of(inbox_id: ColumnElement[int]) -> ColumnElement[str]:
    """`inbox_row_lock` in SQL, for a column of inbox ids."""
    return func.concat(_INBOX_ROW, inbox_id)
