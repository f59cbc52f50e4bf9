"""What an Asaas payment buys (worker/billing/payment_share.py): the plan's credits for its price;
a short payment its share, flagged `needs_attention`; an installment its share, the installments
of one sale never more than the plan's credits together; reversals of an installment take back
what that installment granted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models.settings import process_settings
from tests.support.billing import CLERK_ID, SIGNUP, add_plan, add_user, asaas_event, balance, ledger
from tests.support.inbox import deliver, store

CREDITS = 500
SALE = "2765d086-c7c5-5cca-898a-4262d212587c"


@pytest.fixture
def priced(session_factory) -> None:
    """`pro`: 500 credits for R$ 100.00 a month; its user."""
    add_plan(session_factory, id="pro", name="Pro", credits=CREDITS, asaas_id="pro", price_monthly_cents=10_000)
    add_user(session_factory)


def _pay(session_factory, payment_id: str, value: float, **fields):
    body = asaas_event("PAYMENT_CONFIRMED", event_id=f"evt_{payment_id}", id=payment_id, value=value, **fields)
    return deliver(session_factory, "asaas", body)


def _installment(session_factory, number: int, value: float, sale: str = SALE):
    return _pay(session_factory, f"pay_inst_{number}", value, installment=sale, installmentNumber=number)


def test_a_payment_of_the_price_buys_the_plan(session_factory, priced):
    row = _pay(session_factory, "pay_full", 100)
    assert (row.status, row.detail) == ("processed", "granted 500 credits of plan pro for asaas payment pay_full")
    assert balance(session_factory) == SIGNUP + CREDITS


def test_a_short_payment_buys_its_share_and_needs_attention(session_factory, priced):
    row = _pay(session_factory, "pay_short", 50)
    assert row.status == "needs_attention"
    assert row.detail == (
        "granted 250 credits of plan pro for asaas payment pay_short: the payment of 50.00 is below the "
        "plan's monthly price 100.00 by more than the tolerance (0.00): its share only"
    )
    assert balance(session_factory) == SIGNUP + 250


@pytest.fixture
def tolerance_of_one_real(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("PAYMENT_SHORTFALL_TOLERANCE_CENTS", "100")
    process_settings.cache_clear()
    yield
    monkeypatch.undo()
    process_settings.cache_clear()


def test_a_payment_within_the_tolerance_buys_the_plan(session_factory, priced, tolerance_of_one_real):
    assert _pay(session_factory, "pay_almost", 99.00).status == "processed"
    assert _pay(session_factory, "pay_short_of_it", 98.99).status == "needs_attention"
    assert balance(session_factory) == SIGNUP + CREDITS + 494


def test_a_yearly_only_plan_is_held_to_its_yearly_price(session_factory):
    add_plan(session_factory, id="pro", name="Pro", credits=CREDITS, asaas_id="pro", price_yearly_cents=100_000)
    add_user(session_factory)
    assert _pay(session_factory, "pay_year", 1000).status == "processed"
    row = _pay(session_factory, "pay_month", 100)
    assert (row.status, "yearly price 1000.00" in row.detail) == ("needs_attention", True)
    assert balance(session_factory) == SIGNUP + CREDITS + 50


def test_installments_each_buy_their_share(session_factory, priced):
    rows = [_installment(session_factory, n, 33.34) for n in (1, 2, 3)]
    assert [row.status for row in rows] == ["processed"] * 3
    assert rows[0].detail == (
        "granted 166 credits of plan pro for asaas payment pay_inst_1: "
        "an installment of 33.34 of the plan's monthly price 100.00: its share"
    )
    assert balance(session_factory) == SIGNUP + 3 * 166  # floor per installment: never more than paid for


def test_the_installments_of_one_sale_never_grant_more_than_the_plan(session_factory, priced):
    """A year sold in 12 installments of 83.33: the sale buys the plan's credits once, as one
    payment of the same money would, not 12 times."""
    rows = [_installment(session_factory, n, 83.33) for n in range(1, 13)]
    assert [row.status for row in rows] == ["processed"] * 12
    assert [delta for kind, delta, _ in ledger(session_factory)] == [416, 84]
    assert "its installment sale" in rows[1].detail and "granted 0 credits" in rows[2].detail
    assert balance(session_factory) == SIGNUP + CREDITS
    # Another sale is another purchase.
    _installment(session_factory, 13, 83.33, sale="another-sale")
    assert balance(session_factory) == SIGNUP + CREDITS + 416


def test_refunding_an_installment_reverses_what_it_granted(session_factory, priced):
    for number in (1, 2, 3):
        _installment(session_factory, number, 33.34)
    refund = asaas_event(
        "PAYMENT_REFUNDED", event_id="evt_refund_2", id="pay_inst_2", value=33.34, installment=SALE, installmentNumber=2
    )
    row = deliver(session_factory, "asaas", refund)
    assert row.detail.startswith("reversed 166 credits for asaas payment pay_inst_2")
    assert balance(session_factory) == SIGNUP + 2 * 166
    # A refund never makes room for more credits from the sale's other installments.
    _installment(session_factory, 4, 33.34)
    assert balance(session_factory) == SIGNUP + 2 * 166 + (CREDITS - 3 * 166)


@pytest.mark.celery_worker
def test_installments_granted_at_once_by_two_workers_stay_within_the_plan(
    celery_worker, producer, session_factory, priced
):
    ids = [
        store(
            session_factory,
            "asaas",
            asaas_event(
                "PAYMENT_CONFIRMED",
                event_id=f"evt_c{n}",
                id=f"pay_c{n}",
                value=50,
                installment=SALE,
                installmentNumber=n,
            ),
        )
        for n in range(1, 9)
    ]
    results = [producer.send_task("webhooks.process", kwargs={"inbox_id": i}) for i in ids]
    assert {r.get(timeout=60)["status"] for r in results} == {"processed"}
    assert sorted(delta for _, delta, _ in ledger(session_factory)) == [250, 250]
    assert balance(session_factory, CLERK_ID) == SIGNUP + CREDITS
