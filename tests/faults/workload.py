"""The operator's workload, scaled down: per user a Clerk `user.created`, an Asaas
PAYMENT_CONFIRMED and a PAYMENT_RECEIVED of one payment (different event ids, same payment id),
each delivery sent twice, all shuffled; plus debits with an explicit cost against those users.

What the events imply is known in advance: every user ends with SIGNUP_CREDITS + the plan's
credits (one grant per payment, whichever of the two events lands first) - its applied debits.
The debits of a user cost less than the signup credits, so they apply in any order.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

from tests.support.inbox import payload

USERS = 20  # per scenario (3 events each, each sent twice; 3 debits each): keeps a scenario fast
SIGNUP_CREDITS = 100
PLAN_ID = "pro"  # Plan.id and Plan.asaasId; the externalReference's plan key
PLAN_CREDITS = 500
PAYMENT_VALUE = 100
DEBITS_PER_USER = 3
DEBIT_COST = 7
DEBIT_OPERATION = "AI_TEXT_CHAT"


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


@dataclass(frozen=True)
class Workload:
    users: list[str]
    deliveries: list[ProviderDelivery]  # one per provider event
    sends: list[ProviderDelivery]  # what the providers send: each delivery twice, shuffled
    debits: list[Debit]

    def payment_ids(self) -> set[str]:
        return {json.loads(d.body)["payment"]["id"] for d in self.deliveries if d.source == "asaas"}


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
    return ProviderDelivery("asaas", body["id"], name, json.dumps(body).encode(), clerk_user_id)


def build_workload(users: int, seed: str, prefix: str = "user_fault") -> Workload:
    clerk_ids = [f"{prefix}{number:04d}" for number in range(users)]
    deliveries: list[ProviderDelivery] = []
    for number, clerk_id in enumerate(clerk_ids):
        deliveries.append(user_created(clerk_id))
        deliveries.append(asaas_payment_event("PAYMENT_CONFIRMED", clerk_id, 2 * number))
        deliveries.append(asaas_payment_event("PAYMENT_RECEIVED", clerk_id, 2 * number + 1))
    sends = deliveries * 2
    random.Random(seed).shuffle(sends)
    debits = [
        Debit(f"fault-debit:{clerk_id}:{n}", clerk_id, DEBIT_COST)
        for clerk_id in clerk_ids
        for n in range(DEBITS_PER_USER)
    ]
    assert DEBITS_PER_USER * DEBIT_COST < SIGNUP_CREDITS  # debits apply whatever the order
    return Workload(clerk_ids, deliveries, sends, debits)


def with_deliveries(
    workload: Workload, extra: list[ProviderDelivery], *, sends: int = 2, users: list[str] | None = None
) -> Workload:
    """`workload` plus `extra` deliveries, each sent `sends` times at random points of the stream
    (and `users`, whose balances the checks then expect too)."""
    merged = [*workload.sends, *(extra * sends)]
    random.Random(",".join(delivery.event_id for delivery in extra)).shuffle(merged)
    return Workload([*workload.users, *(users or [])], [*workload.deliveries, *extra], merged, workload.debits)


def plan_row() -> dict[str, Any]:
    return {"id": PLAN_ID, "name": "Pro", "credits": PLAN_CREDITS, "asaas_id": PLAN_ID}
