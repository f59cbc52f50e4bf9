"""The analytics the app's seed asked for, and the credits flow: plain rows for `report ...`.

Days are UTC calendar days. Every report reads only; each is one statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session

from models.app import CreditBalance, UsageHistory, User
from models.ledger import CreditLedgerEntry, LedgerKind
from models.usage import CreditHold


@dataclass(frozen=True)
class UsersOnDay:
    day: date
    new_users: int
    total_users: int  # all users created up to the end of that day


def users_by_day(session: Session, since: datetime | None = None) -> list[UsersOnDay]:
    day = cast(User.created_at, Date).label("day")
    per_day = select(day, func.count().label("new_users")).group_by(day).subquery()
    running = func.sum(per_day.c.new_users).over(order_by=per_day.c.day)
    statement = select(per_day.c.day, per_day.c.new_users, running).order_by(per_day.c.day)
    rows = session.execute(statement).all()
    return [UsersOnDay(row[0], row[1], int(row[2])) for row in rows if since is None or row[0] >= since.date()]


@dataclass(frozen=True)
class OperationUse:
    operation: str
    uses: int  # debits (refunds are not uses)
    credits: int  # credits debited in all
    average_credits: Decimal  # per use, 2 decimals
    refunded: int  # credits given back by refunds of this operation


def operations(session: Session, since: datetime | None = None, clerk_user_id: str | None = None) -> list[OperationUse]:
    """The most used operations first (of one user, when given)."""
    debit = UsageHistory.credits_used > 0
    uses = func.count().filter(debit)
    statement = (
        select(
            UsageHistory.operation_type,
            uses,
            func.coalesce(func.sum(UsageHistory.credits_used).filter(debit), 0),
            func.round(func.avg(UsageHistory.credits_used).filter(debit), 2),
            func.coalesce(-func.sum(UsageHistory.credits_used).filter(~debit), 0),
        )
        .group_by(UsageHistory.operation_type)
        .order_by(uses.desc(), UsageHistory.operation_type)
    )
    if since is not None:
        statement = statement.where(UsageHistory.timestamp >= since.replace(tzinfo=None))
    if clerk_user_id is not None:
        statement = statement.where(
            UsageHistory.user_id == select(User.id).where(User.clerk_id == clerk_user_id).scalar_subquery()
        )
    return [
        OperationUse(operation.value, count, int(credits), average or Decimal(0), int(refunded))
        for operation, count, credits, average, refunded in session.execute(statement).all()
    ]


@dataclass(frozen=True)
class LowBalance:
    clerk_user_id: str
    email: str | None
    credits_remaining: int


def low_balance(session: Session, threshold: int = 10) -> list[LowBalance]:
    """Active users with fewer than `threshold` credits, lowest first."""
    statement = (
        select(CreditBalance.clerk_user_id, User.email, CreditBalance.credits_remaining)
        .join(User, User.id == CreditBalance.user_id)
        .where(CreditBalance.credits_remaining < threshold, User.is_active.is_(True))
        .order_by(CreditBalance.credits_remaining, CreditBalance.clerk_user_id)
    )
    return [LowBalance(*row) for row in session.execute(statement).all()]


HOLD_EVENTS = ("holds", "captures", "releases", "expiries")


@dataclass(frozen=True)
class CreditsOnDay:
    day: date
    by_kind: dict[str, int]  # every ledger kind, zeros included
    holds: dict[str, int]  # how many holds were made, captured, released and expired (HOLD_EVENTS)

    @property
    def net(self) -> int:
        return sum(self.by_kind.values())


def credits_flow(session: Session, since: datetime | None = None) -> list[CreditsOnDay]:
    """Per UTC day and ledger kind (signup, grant, reversal, usage, refund, adjustment,
    external), the credits that moved: positive in, negative out."""
    day = cast(func.timezone("UTC", CreditLedgerEntry.created_at), Date).label("day")
    statement = select(day, CreditLedgerEntry.kind, func.sum(CreditLedgerEntry.delta)).group_by(
        day, CreditLedgerEntry.kind
    )
    if since is not None:
        statement = statement.where(CreditLedgerEntry.created_at >= since)
    days: dict[date, dict[str, int]] = {}
    for moment, kind, total in session.execute(statement.order_by(day)).all():
        days.setdefault(moment, {k.value: 0 for k in LedgerKind})[kind] = int(total)
    hold_events = _hold_events(session, since)
    for moment in hold_events:
        days.setdefault(moment, {k.value: 0 for k in LedgerKind})
    zeros = dict.fromkeys(HOLD_EVENTS, 0)
    return [CreditsOnDay(moment, days[moment], {**zeros, **hold_events.get(moment, {})}) for moment in sorted(days)]


_ENDED = {"captured": "captures", "released": "releases", "expired": "expiries"}


def _hold_events(session: Session, since: datetime | None) -> dict[date, dict[str, int]]:
    """Per UTC day: the holds made, and the holds ended, by how they ended."""
    events: dict[date, dict[str, int]] = {}
    made = cast(func.timezone("UTC", CreditHold.created_at), Date)
    ended = cast(func.timezone("UTC", CreditHold.ended_at), Date)
    made_rows = select(made, func.count()).group_by(made)
    ended_rows = select(ended, CreditHold.state, func.count()).where(CreditHold.ended_at.is_not(None))
    if since is not None:
        made_rows = made_rows.where(CreditHold.created_at >= since)
        ended_rows = ended_rows.where(CreditHold.ended_at >= since)
    for moment, count in session.execute(made_rows).all():
        events.setdefault(moment, {})["holds"] = count
    for moment, state, count in session.execute(ended_rows.group_by(ended, CreditHold.state)).all():
        events.setdefault(moment, {})[_ENDED[state]] = count
    return events
