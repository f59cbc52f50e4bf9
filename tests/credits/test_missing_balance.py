"""A credit change on a balance that is not there fails instead of quietly doing nothing.

Before, `change_credits` without a floor answered None for a missing balance and its callers
ignored it: `grant_payment` then marked the payment granted with no credits given, for good.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models.app import Plan
from models.billing import PaymentCredit
from models.ledger import CreditLedgerEntry, LedgerKind
from worker.credits.grants_and_reversals import Payment, grant_payment
from worker.credits.ledger import change_credits
from worker.errors import MissingBalance


def _count(factory: sessionmaker[Session], model: type[PaymentCredit] | type[CreditLedgerEntry]) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_a_change_without_floor_on_a_missing_balance_raises(session: Session) -> None:
    with pytest.raises(MissingBalance, match="no_such_balance"):
        change_credits(
            session, "no_such_balance", delta=5, kind=LedgerKind.ADJUSTMENT, idempotency_key="k1", reference="test"
        )


def test_a_change_with_a_floor_on_a_missing_balance_is_refused(session: Session) -> None:
    change = change_credits(
        session, "no_such_balance", delta=-5, kind=LedgerKind.USAGE, idempotency_key="k1", reference="test", floor=0
    )
    assert change is None


def test_a_grant_to_a_missing_balance_fails_and_marks_nothing_granted(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(MissingBalance), session_factory.begin() as session:
        plan = Plan(id="pro", name="Pro", credits=500)
        session.add(plan)
        session.flush()
        grant_payment(
            session,
            Payment("asaas", "pay_1", "asaas payment pay_1"),
            credit_balance_id="gone",
            clerk_user_id="user_gone",
            plan=plan,
        )
    assert (_count(session_factory, PaymentCredit), _count(session_factory, CreditLedgerEntry)) == (0, 0)
