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


@dataclass(frozen=True)
class CreditsOnDay:
    day: date
    by_kind: dict[str, int]  # every ledger kind, zeros included

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
    return [CreditsOnDay(moment, kinds) for moment, kinds in days.items()]
