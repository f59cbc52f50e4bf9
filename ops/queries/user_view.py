"""`pedro-webhooks user show`: one user's balance explained, from the ledger up."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.app import CreditBalance, Plan, StorageObject, UsageHistory, User
from models.billing import UserPlan
from models.inbox import InboxStatus, WebhookInbox
from models.ledger import CreditLedgerEntry
from models.usage import CreditHold, HoldState
from ops.queries.inbox_rows import id_for_rows_naming_a_user, rows_naming_user
from ops.queries.sent_deliveries import SentDelivery, sent_deliveries

# Rows that name the user and still wait for something (a person, a replay).
_WAITING = (InboxStatus.PENDING, InboxStatus.UNMATCHED, InboxStatus.NEEDS_ATTENTION, InboxStatus.FAILED)


@dataclass(frozen=True)
class StorageSummary:
    live_objects: int
    live_bytes: int
    deleted_objects: int


@dataclass
class UserView:
    user: User
    balance: CreditBalance | None
    ledger_sum: int
    plan: Plan | None
    plan_state: UserPlan | None
    ledger: list[CreditLedgerEntry]
    ledger_entries: int  # in all (the page shows `ledger`)
    # entry id -> the sum of the user's ledger up to and including it: equal to the entry's
    # balance_after unless something changed the balance behind the ledger's back.
    running_balance: dict[int, int]
    usage: list[UsageHistory]
    storage: list[StorageObject]
    storage_summary: StorageSummary
    waiting: list[WebhookInbox] = field(default_factory=list)
    # Deliveries `pedro-webhooks send` made that name the user, and the ledger entries they account for.
    sent_by_send: list[SentDelivery] = field(default_factory=list)
    # Credit holds still open, oldest first: their credits are out of the balance until they end.
    open_holds: list[CreditHold] = field(default_factory=list)

    @property
    def held_credits(self) -> int:
        return sum(hold.credits for hold in self.open_holds)

    @property
    def balance_matches_ledger(self) -> bool:
        return self.balance is None or self.balance.credits_remaining == self.ledger_sum

    @property
    def entries_sent_by_send(self) -> set[int]:
        return {entry.id for delivery in self.sent_by_send for entry in delivery.ledger_entries}


def user_view(
    session: Session, clerk_user_id: str, *, page: int = 1, per_page: int = 20, recent: int = 10
) -> UserView | None:
    user = session.scalar(select(User).where(User.clerk_id == clerk_user_id))
    if user is None:
        return None
    balance = session.scalar(select(CreditBalance).where(CreditBalance.user_id == user.id))
    by_user = CreditLedgerEntry.clerk_user_id == clerk_user_id
    ledger_sum = session.scalar(select(func.coalesce(func.sum(CreditLedgerEntry.delta), 0)).where(by_user)) or 0
    if balance is not None:
        # The invariant is per balance: the entries of this balance are what explain it.
        by_balance = CreditLedgerEntry.credit_balance_id == balance.id
        ledger_sum = session.scalar(select(func.coalesce(func.sum(CreditLedgerEntry.delta), 0)).where(by_balance)) or 0
    plan_state = session.get(UserPlan, clerk_user_id)
    plan = session.get(Plan, plan_state.plan_id) if plan_state is not None and plan_state.plan_id else None
    ledger, running_balance = _ledger_page(session, clerk_user_id, page, per_page)
    return UserView(
        user=user,
        balance=balance,
        ledger_sum=ledger_sum,
        plan=plan,
        plan_state=plan_state,
        ledger=ledger,
        running_balance=running_balance,
        ledger_entries=session.scalar(select(func.count()).where(by_user)) or 0,
        usage=list(
            session.scalars(
                select(UsageHistory)
                .where(UsageHistory.user_id == user.id)
                .order_by(UsageHistory.timestamp.desc(), UsageHistory.id)
                .limit(recent)
            )
        ),
        storage=list(
            session.scalars(
                select(StorageObject)
                .where(StorageObject.user_id == user.id)
                .order_by(StorageObject.created_at.desc(), StorageObject.id)
                .limit(recent)
            )
        ),
        storage_summary=_storage_summary(session, user.id),
        waiting=list(
            session.scalars(
                select(WebhookInbox)
                .where(WebhookInbox.status.in_([s.value for s in _WAITING]), rows_naming_user(clerk_user_id))
                .order_by(id_for_rows_naming_a_user())
                .limit(recent)
            )
        ),
        sent_by_send=sent_deliveries(session, clerk_user_id),
        open_holds=open_holds(session, clerk_user_id),
    )


def open_holds(session: Session, clerk_user_id: str) -> list[CreditHold]:
    return list(
        session.scalars(
            select(CreditHold)
            .where(CreditHold.clerk_user_id == clerk_user_id, CreditHold.state == HoldState.OPEN.value)
            .order_by(CreditHold.created_at, CreditHold.hold_key)
        )
    )


def _ledger_page(
    session: Session, clerk_user_id: str, page: int, per_page: int
) -> tuple[list[CreditLedgerEntry], dict[int, int]]:
    """One page of the ledger, newest first, with each entry's running sum (the window runs over
    every entry of the user, then the page is cut)."""
    running = func.sum(CreditLedgerEntry.delta).over(order_by=CreditLedgerEntry.id).label("running")
    every = select(CreditLedgerEntry.id, running).where(CreditLedgerEntry.clerk_user_id == clerk_user_id).subquery()
    rows = session.execute(
        select(CreditLedgerEntry, every.c.running)
        .join(every, every.c.id == CreditLedgerEntry.id)
        .order_by(CreditLedgerEntry.id.desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    return [entry for entry, _ in rows], {entry.id: int(total) for entry, total in rows}


@dataclass(frozen=True)
class BalancePoint:
    at: datetime
    balance: int  # the entry's balance_after


def balance_history(session: Session, clerk_user_id: str, *, limit: int = 5000) -> list[BalancePoint]:
    """The balance after each of the user's latest `limit` ledger entries, oldest first (a chart)."""
    latest = (
        select(CreditLedgerEntry.id, CreditLedgerEntry.created_at, CreditLedgerEntry.balance_after)
        .where(CreditLedgerEntry.clerk_user_id == clerk_user_id)
        .order_by(CreditLedgerEntry.id.desc())
        .limit(limit)
        .subquery()
    )
    rows = session.execute(select(latest.c.created_at, latest.c.balance_after).order_by(latest.c.id)).all()
    return [BalancePoint(at, balance) for at, balance in rows]


def _storage_summary(session: Session, user_id: str) -> StorageSummary:
    live = StorageObject.deleted_at.is_(None)
    row = session.execute(
        select(
            func.count().filter(live),
            func.coalesce(func.sum(StorageObject.size).filter(live), 0),
            func.count().filter(~live),
        ).where(StorageObject.user_id == user_id)
    ).one()
    return StorageSummary(row[0], int(row[1]), row[2])
