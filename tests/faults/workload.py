"""The operator's workload, scaled down: per user a Clerk `user.created`, an Asaas
PAYMENT_CONFIRMED and a PAYMENT_RECEIVED of one payment (different event ids, same payment id);
for some users a partial refund or a chargeback of that payment. Each event is sent ONCE (the
providers send it again only after a failed attempt), shuffled. Plus, per user, debits with an
explicit cost (some users' debits cost more than their credits: overdraft pressure; some debits
sent from two threads at once) and credit holds that end captured, released or expired.

What the events imply is known in advance (SIGNUP_CREDITS + the plan's credits - the reversed
credits); the debits and captures then take what the answers say they took.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.support.inbox import payload

USERS = 20  # per scenario: keeps a scenario fast
SIGNUP_CREDITS = 100
PLAN_ID = "pro"  # Plan.id and Plan.asaasId; the externalReference's plan key
PLAN_CREDITS = 500
PAYMENT_VALUE = 100
DEBITS_PER_USER = 3
DEBIT_COST = 7
DEBIT_OPERATION = "AI_TEXT_CHAT"
# Overdraft pressure: these users' debits cost more than everything they are ever given.
PRESSURE_USERS = 3
PRESSURE_DEBITS, PRESSURE_COST = 10, 70
# Reversals (of the users after the pressure ones): a refund of 30 of the payment's 100 takes
# back 30 % of the plan's credits; a chargeback takes them all.
REFUNDED_VALUE = 30
REFUND_USERS, CHARGEBACK_USERS = 2, 1
# Holds (of the users after those): one per user, ending in turn captured, released, expired.
HOLD_USERS = 9
HOLD_CREDITS, CAPTURED_CREDITS = 10, 6
HOLD_EXPIRES_IN = 600.0  # a hold the service ends: far beyond the scenario
ABANDONED_EXPIRES_IN = 2.0  # a hold its caller never ends: the service expires it
# Every CONCURRENT_EVERY-th user's first debit is sent from two threads at once.
CONCURRENT_EVERY = 3


@dataclass(frozen=True)
class ProviderDelivery:
    """One provider event: Clerk's svix-id or Asaas's event id is its identity on every send."""

    source: str  # clerk | asaas
    event_id: str
    event_type: str
    body: bytes
    clerk_user_id: str

    @property
    def path(self) -> str:
        return f"/webhooks/{self.source}"


@dataclass(frozen=True)
class Debit:
    key: str
    clerk_user_id: str
    cost: int
    concurrent: bool = False  # sent from two threads at once, same key


@dataclass(frozen=True)
class Hold:
    key: str
    clerk_user_id: str
    credits: int
    end: str  # capture | release | expire (its caller never ends it)
    expires_in: float

    @property
    def final_state(self) -> str:
        return {"capture": "captured", "release": "released", "expire": "expired"}[self.end]


@dataclass(frozen=True)
class Workload:
    users: list[str]
    deliveries: list[ProviderDelivery]  # one per provider event
    sends: list[ProviderDelivery]  # what the providers send: each delivery once, shuffled
    debits: list[Debit]
    holds: list[Hold] = field(default_factory=list)
    reversed_credits: dict[str, int] = field(default_factory=dict)  # per user, what refunds take back
    pressure_users: list[str] = field(default_factory=list)

    def payment_ids(self) -> set[str]:
        return {json.loads(d.body)["payment"]["id"] for d in self.deliveries if d.source == "asaas"}

    def subscription_events(self) -> Counter[tuple[str, str]]:
        """The `SubscriptionEvent` rows the Asaas events imply: one per event, by (user, type)."""
        return Counter((d.clerk_user_id, d.event_type) for d in self.deliveries if d.source == "asaas")


def user_created(clerk_user_id: str) -> ProviderDelivery:
    body = copy.deepcopy(payload("clerk/user.created"))
    email_id = f"idn_{clerk_user_id}"
    body["data"].update(
        id=clerk_user_id,
        email_addresses=[{"id": email_id, "object": "email_address", "email_address": f"{clerk_user_id}@example.org"}],
        primary_email_address_id=email_id,
        first_name="Fault",
        last_name=clerk_user_id,
        updated_at=1_700_000_000_000,
        created_at=1_700_000_000_000,
    )
    return ProviderDelivery(
        "clerk", f"msg_{uuid.uuid4().hex}", "user.created", json.dumps(body).encode(), clerk_user_id
    )


def asaas_payment_event(name: str, clerk_user_id: str, number: int) -> ProviderDelivery:
    body = copy.deepcopy(payload(f"asaas/{name}"))
    body["id"] = f"evt_{uuid.uuid4().hex}&{number}"
    body["payment"].update(
        id=f"pay_{clerk_user_id}",
        customer=f"cus_{clerk_user_id}",
        subscription=f"sub_{clerk_user_id}",
        value=PAYMENT_VALUE,
        externalReference=f"{clerk_user_id}|{PLAN_ID}",
    )
    if name == "PAYMENT_PARTIALLY_REFUNDED":
        body["payment"]["refunds"] = [{"status": "DONE", "value": float(REFUNDED_VALUE), "dateCreated": "2024-06-18"}]
    return ProviderDelivery("asaas", body["id"], name, json.dumps(body).encode(), clerk_user_id)


def build_workload(users: int, seed: str, prefix: str = "user_fault") -> Workload:
    clerk_ids = [f"{prefix}{number:04d}" for number in range(users)]
    pressure = clerk_ids[:PRESSURE_USERS]
    refunded = clerk_ids[PRESSURE_USERS : PRESSURE_USERS + REFUND_USERS]
    charged_back = clerk_ids[PRESSURE_USERS + REFUND_USERS : PRESSURE_USERS + REFUND_USERS + CHARGEBACK_USERS]
    first_holder = PRESSURE_USERS + REFUND_USERS + CHARGEBACK_USERS
    holders = clerk_ids[first_holder : first_holder + HOLD_USERS]
    deliveries: list[ProviderDelivery] = []
    reversed_credits: dict[str, int] = {}
    for number, clerk_id in enumerate(clerk_ids):
        deliveries.append(user_created(clerk_id))
        deliveries.append(asaas_payment_event("PAYMENT_CONFIRMED", clerk_id, 3 * number))
        deliveries.append(asaas_payment_event("PAYMENT_RECEIVED", clerk_id, 3 * number + 1))
        if clerk_id in refunded:
            deliveries.append(asaas_payment_event("PAYMENT_PARTIALLY_REFUNDED", clerk_id, 3 * number + 2))
            reversed_credits[clerk_id] = PLAN_CREDITS * REFUNDED_VALUE // PAYMENT_VALUE
        if clerk_id in charged_back:
            deliveries.append(asaas_payment_event("PAYMENT_CHARGEBACK_REQUESTED", clerk_id, 3 * number + 2))
            reversed_credits[clerk_id] = PLAN_CREDITS
    sends = list(deliveries)
    random.Random(seed).shuffle(sends)
    debits = [
        Debit(f"fault-debit:{clerk_id}:{n}", clerk_id, DEBIT_COST, concurrent=n == 0 and number % CONCURRENT_EVERY == 0)
        for number, clerk_id in enumerate(clerk_ids)
        if clerk_id not in pressure
        for n in range(DEBITS_PER_USER)
    ]
    debits += [
        Debit(f"fault-debit:{clerk_id}:{n}", clerk_id, PRESSURE_COST, concurrent=n == 0)
        for clerk_id in pressure
        for n in range(PRESSURE_DEBITS)
    ]
    assert PRESSURE_DEBITS * PRESSURE_COST > SIGNUP_CREDITS + PLAN_CREDITS  # some must be refused
    ends = ("capture", "release", "expire")
    holds = [
        Hold(
            f"fault-hold:{clerk_id}",
            clerk_id,
            HOLD_CREDITS,
            ends[n % len(ends)],
            ABANDONED_EXPIRES_IN if ends[n % len(ends)] == "expire" else HOLD_EXPIRES_IN,
        )
        for n, clerk_id in enumerate(holders)
    ]
    # Debits and holds of everyone but the pressure users fit in the sign-up credits alone (any
    # order), and no reversal can take a balance below zero: balances never go negative.
    assert DEBITS_PER_USER * DEBIT_COST + HOLD_CREDITS < SIGNUP_CREDITS
    return Workload(clerk_ids, deliveries, sends, debits, holds, reversed_credits, pressure)


def with_deliveries(
    workload: Workload, extra: list[ProviderDelivery], *, sends: int = 1, users: list[str] | None = None
) -> Workload:
    """`workload` plus `extra` deliveries, each sent `sends` times at random points of the stream
    (and `users`, whose balances the checks then expect too)."""
    merged = [*workload.sends, *(extra * sends)]
    random.Random(",".join(delivery.event_id for delivery in extra)).shuffle(merged)
    return Workload(
        [*workload.users, *(users or [])],
        [*workload.deliveries, *extra],
        merged,
        workload.debits,
        workload.holds,
        workload.reversed_credits,
        workload.pressure_users,
    )


def plan_row() -> dict[str, Any]:
    return {"id": PLAN_ID, "name": "Pro", "credits": PLAN_CREDITS, "asaas_id": PLAN_ID}
