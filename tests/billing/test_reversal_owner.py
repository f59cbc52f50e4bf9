"""A reversal takes the credits back from the user the grant went to (recorded on the payment's
row at grant time), never from whoever the refund's reference or a re-pointed Asaas customer
link resolves to now."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models.billing import PaymentCredit, ProviderLink
from models.ledger import CreditLedgerEntry
from tests.support.billing import CLERK_ID, PRO_CREDITS, SIGNUP, add_user, asaas_event, balance
from tests.support.inbox import deliver

OTHER = "user_2otherOwnerOfTheCustomer0"
PAYMENT = "pay_080225913252"  # the fixtures' payment, granted to CLERK_ID
CUSTOMER = "cus_G7Dvo4iphUNk"
SUBSCRIPTION = "sub_VXJBYgP2u0eO"


@pytest.fixture
def granted(session_factory, pro):
    """CLERK_ID paid for `pro` (externalReference `<CLERK_ID>|pro`); OTHER is a second user."""
    add_user(session_factory, OTHER)
    row = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    assert row.status == "processed", row.detail
    assert (balance(session_factory), balance(session_factory, OTHER)) == (SIGNUP + PRO_CREDITS, SIGNUP)


def _owner_of_links(session_factory) -> set[str]:
    with session_factory() as session:
        return set(session.scalars(select(ProviderLink.clerk_user_id)))


def _reversal_balances(session_factory) -> list[str]:
    with session_factory() as session:
        return list(
            session.scalars(select(CreditLedgerEntry.clerk_user_id).where(CreditLedgerEntry.kind == "reversal"))
        )


def test_a_refund_after_the_customer_link_moved_reverses_the_original_user(session_factory, granted):
    # Another sale on the same Asaas customer and subscription, now referenced to OTHER: the
    # links move to OTHER.
    moved = asaas_event("PAYMENT_CREATED", event_id="evt_moved&1", id="pay_other", externalReference=f"{OTHER}|pro")
    deliver(session_factory, "asaas", moved)
    assert _owner_of_links(session_factory) == {OTHER}
    # The refund carries no reference: only the (now re-pointed) customer and subscription.
    refund = deliver(session_factory, "asaas", asaas_event("PAYMENT_REFUNDED", externalReference=None))

    assert refund.status == "processed", refund.detail
    assert refund.detail.startswith(f"reversed {PRO_CREDITS} credits for asaas payment {PAYMENT}")
    assert balance(session_factory) == SIGNUP  # the grant's user paid it back
    assert balance(session_factory, OTHER) == SIGNUP  # untouched
    assert _reversal_balances(session_factory) == [CLERK_ID]


def test_a_refund_whose_reference_names_another_user_reverses_the_grant_s_user(session_factory, granted):
    refund = asaas_event("PAYMENT_CHARGEBACK_REQUESTED", externalReference=f"{OTHER}|pro", customer="cus_other")
    row = deliver(session_factory, "asaas", refund)
    assert row.status == "processed", row.detail
    assert (balance(session_factory), balance(session_factory, OTHER)) == (SIGNUP, SIGNUP)
    assert _reversal_balances(session_factory) == [CLERK_ID]


def test_the_grant_records_the_balance_it_credited(session_factory, granted):
    with session_factory() as session:
        state = session.scalars(select(PaymentCredit).where(PaymentCredit.payment_id == PAYMENT)).one()
        granted_to = session.scalar(
            select(CreditLedgerEntry.credit_balance_id).where(CreditLedgerEntry.kind == "grant")
        )
    assert state.credit_balance_id == granted_to and state.clerk_user_id == CLERK_ID


def test_a_refund_for_a_user_not_known_yet_is_remembered_not_left_waiting(session_factory, pro_plan):
    """Nothing was granted, so there is no balance to take from: the refund is remembered and
    the later grant nets to zero."""
    refund = deliver(session_factory, "asaas", asaas_event("PAYMENT_REFUNDED"))
    assert refund.status == "processed" and "remembered" in refund.detail
    add_user(session_factory)
    deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    assert balance(session_factory) == SIGNUP
