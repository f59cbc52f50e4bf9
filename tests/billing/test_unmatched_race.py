"""The unmatched race, forced: a billing event processed while the transaction that makes its
user (or its Asaas link) known is still open, after that transaction's replay looked for waiting
events. Without the per-user and per-link locks the event committed `unmatched` and nothing ever
retried it; now it waits for that transaction, then sees what it made known."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from models.inbox import WebhookInbox
from tests.support.billing import CLERK_ID, PRO_CREDITS, SIGNUP, add_user, asaas_event, balance
from tests.support.databases import libpq_url
from tests.support.inbox import clerk_user_event, inbox_row, process, store
from worker.inbox.processing import claim_row, process_row


@contextmanager
def processed_but_not_committed(factory: sessionmaker[Session], inbox_id: int) -> Iterator[Session]:
    """The pipeline's work on `inbox_id` (handler, replay query, status), in a transaction the
    test commits when the block ends: the other transaction's window, held open."""
    with factory() as session, session.begin():
        assert claim_row(session, inbox_id)
        assert process_row(session, inbox_id)["status"] == "processed"
        yield session


def _in_a_thread(inbox_id: int) -> tuple[threading.Thread, dict]:
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(process(inbox_id)), daemon=True)
    thread.start()
    return thread, answer


def _wait_until_it_waits_for_a_lock(settings, timeout: float = 30, lock: str = "advisory") -> None:
    with psycopg.connect(libpq_url(settings.database_url.get_secret_value()), autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND wait_event = %s",
                (lock,),
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the billing event never waited for the open transaction")


def test_a_payment_processed_while_its_user_is_being_created_is_granted(session_factory, settings, pro_plan):
    user_created = store(session_factory, "clerk", clerk_user_event("user.created", CLERK_ID, 1, email_addresses=[]))
    payment = store(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    with processed_but_not_committed(session_factory, user_created):
        thread, answer = _in_a_thread(payment)
        _wait_until_it_waits_for_a_lock(settings)
        assert answer == {}  # still waiting: it cannot decide the user is missing
    thread.join(timeout=30)
    assert answer == {"inbox_id": payment, "status": "processed"}
    assert balance(session_factory) == SIGNUP + PRO_CREDITS
    assert inbox_row(session_factory, payment).status == "processed"


def test_a_payment_processed_while_its_customer_link_is_being_learned_is_granted(session_factory, settings, pro_plan):
    add_user(session_factory)
    # The subscription's creation names the user; a payment of the same customer does not.
    teaches = store(session_factory, "asaas", asaas_event("SUBSCRIPTION_CREATED"))
    anonymous = asaas_event(
        "PAYMENT_CONFIRMED",
        event_id="evt_anon",
        id="pay_anon",
        externalReference=None,
        customer="cus_000000008773",
        subscription="sub_m5gdy1upm25fbwgx",
    )
    payment = store(session_factory, "asaas", anonymous)
    with processed_but_not_committed(session_factory, teaches):
        thread, answer = _in_a_thread(payment)
        _wait_until_it_waits_for_a_lock(settings)
        assert answer == {}
    thread.join(timeout=30)
    assert answer == {"inbox_id": payment, "status": "processed"}, inbox_row(session_factory, payment).detail
    assert balance(session_factory) == SIGNUP + PRO_CREDITS


def test_a_waiting_event_ignored_while_its_user_is_created_stays_ignored(session_factory, settings, pro_plan):
    """The replay of a new user's waiting events waits for a transaction that holds one of them
    (an operator marking it `ignored`), then sees that it no longer waits: it is not put back."""
    payment = store(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    assert process(payment)["status"] == "unmatched"
    user_created = store(session_factory, "clerk", clerk_user_event("user.created", CLERK_ID, 1, email_addresses=[]))
    with session_factory() as operator, operator.begin():
        operator.execute(update(WebhookInbox).where(WebhookInbox.id == payment).values(status="ignored"))
        thread, answer = _in_a_thread(user_created)
        _wait_until_it_waits_for_a_lock(settings, lock="transactionid")  # the row's lock
        assert answer == {}
    thread.join(timeout=30)
    assert answer == {"inbox_id": user_created, "status": "processed"}
    assert "replaying" not in (inbox_row(session_factory, user_created).detail or "")
    assert inbox_row(session_factory, payment).status == "ignored"
    assert balance(session_factory) == SIGNUP  # the payment was not granted behind the operator's back
