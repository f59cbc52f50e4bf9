"""Realistic deliveries for `pedro-webhooks send`, signed as the providers sign them.

The JSON files beside this module are the providers' documented example deliveries (the same
as tests/fixtures/payloads). A delivery is built from one with fresh event ids, the chosen user
and plan, and the current time, then signed: Clerk's with `svix` (`Webhook.sign`, one signature
per configured secret), Asaas's with the `asaas-access-token` header. A plan key K names Asaas
`externalReference` `<user>|K` (`Plan.asaasId` or `Plan.id`) and Clerk plan `cplan_K`, slug K
(`Plan.clerkId`, `Plan.clerkName`). `post` sends it like the provider would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from svix.webhooks import Webhook

from worker.billing.asaas_events import DOCUMENTED_EVENTS as ASAAS_EVENTS

FOLDER = Path(__file__).parent
DEFAULT_USER = "user_demo"
DEFAULT_PLAN = "demo"
DEFAULT_VALUE = Decimal("100")  # BRL, an Asaas payment's value
DEFAULT_AMOUNT_CENTS = 2000  # a Clerk plan's price
ASAAS_TIMEZONE = ZoneInfo("America/Sao_Paulo")  # Asaas writes local times without an offset

# Clerk event type -> the example it is built from.
CLERK_EXAMPLES = {
    "user.created": "user.created",
    "user.updated": "user.updated",
    "user.deleted": "user.deleted",
    "subscription.active": "subscription.active",
    "subscriptionItem.active": "subscriptionItem.active",
    "subscriptionItem.pastDue": "subscriptionItem.pastDue",
    "subscriptionItem.updated": "subscriptionItem.updated.renewed",
    "paymentAttempt.updated": "paymentAttempt.updated.paid",
}
CLERK_EVENTS = tuple(CLERK_EXAMPLES)
ASAAS_EVENT_TYPES = tuple(sorted(ASAAS_EVENTS))
_ASAAS_BASE_EXAMPLE = {
    "payment": "PAYMENT_CONFIRMED",
    "subscription": "SUBSCRIPTION_CREATED",
    "checkout": "CHECKOUT_CREATED",
}


# Every delivery `send` makes carries this top-level field (the receiver stores the body as it
# came; the handlers ignore fields they do not read): `reconcile` and `user show` flag what such
# deliveries changed, so a test delivery is never taken for a provider's.
SENT_BY_FIELD = "pedro_webhooks_sent_by"
SENT_BY_SEND = "pedro-webhooks send"


def marked_as_sent(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, SENT_BY_FIELD: SENT_BY_SEND}


class DeliveryError(Exception):
    """The delivery could not be built, signed or sent; the message says why."""


@dataclass(frozen=True)
class Options:
    user: str = DEFAULT_USER
    plan: str = DEFAULT_PLAN
    value: Decimal = DEFAULT_VALUE  # Asaas payment value
    refunded: Decimal | None = None  # Asaas partial refund (default: half the value)
    payment: str | None = None  # reuse a payment (Asaas) or payment attempt (Clerk) id
    status: str = "paid"  # Clerk payment attempt status
    email: str | None = None


@dataclass(frozen=True)
class Signed:
    source: str
    event_id: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Answer:
    status: int
    body: str


def example(source: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FOLDER / source / f"{name}.json").read_text())
    return data


# --- Clerk ---------------------------------------------------------------------------------


def clerk_delivery(event_type: str, options: Options, now: datetime | None = None) -> dict[str, Any]:
    if event_type not in CLERK_EXAMPLES:
        raise DeliveryError(f"no example for Clerk {event_type}: choose one of {', '.join(CLERK_EVENTS)}")
    now = now or datetime.now(UTC)
    body = copy.deepcopy(example("clerk", CLERK_EXAMPLES[event_type]))
    now_ms = int(now.timestamp() * 1000)
    body["timestamp"] = now_ms if body["timestamp"] > 10**12 else now_ms // 1000
    data = body["data"]
    if event_type.startswith("user."):
        _clerk_user(data, event_type, options, now_ms)
    else:
        _clerk_billing(data, options, now)
    return body


def _clerk_user(data: dict[str, Any], event_type: str, options: Options, now_ms: int) -> None:
    data["id"] = options.user
    if event_type == "user.deleted":
        return
    address_id = f"idn_{_short_hash(options.user)}"
    data["email_addresses"][0].update(id=address_id, email_address=options.email or f"{options.user}@example.org")
    data["primary_email_address_id"] = address_id
    data["first_name"], data["last_name"] = "Demo", options.user
    data["updated_at"] = now_ms
    if event_type == "user.created":
        data["created_at"] = now_ms


def _clerk_billing(data: dict[str, Any], options: Options, now: datetime) -> None:
    data["payer"]["user_id"] = options.user
    data["payer"]["email"] = options.email or f"{options.user}@example.org"
    if data.get("object") == "commerce_payment_attempt":
        data["id"] = options.payment or f"cpa_{uuid.uuid4().hex[:20]}"
        data["status"] = options.status
        data["totals"]["grand_total"]["amount"] = DEFAULT_AMOUNT_CENTS
    period_start = int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)
    period_end = period_start + int(timedelta(days=30).total_seconds() * 1000)
    for item in _subscription_items(data):
        item["id"] = f"csub_item_{_short_hash(options.user + options.plan)}"
        item["plan_id"] = f"cplan_{options.plan}"
        item["plan"].update(id=f"cplan_{options.plan}", slug=options.plan, name=options.plan.title())
        item["plan"]["amount"] = DEFAULT_AMOUNT_CENTS
        item["period_start"], item["period_end"] = period_start, period_end


def _subscription_items(data: dict[str, Any]) -> list[dict[str, Any]]:
    if data.get("object") == "commerce_subscription_item":
        return [data]
    items = data.get("subscription_items") or data.get("items") or []
    return [item for item in items if isinstance(item, dict)]


def sign_clerk(body: dict[str, Any], signing_secrets: list[str], now: datetime | None = None) -> Signed:
    """As Svix sends it: svix-id, svix-timestamp and one `v1,` signature per secret."""
    if not signing_secrets:
        raise DeliveryError("CLERK_WEBHOOK_SIGNING_SECRET is not set: send signs with the receiver's secret")
    now = now or datetime.now(UTC)
    text = json.dumps(body)
    message_id = f"msg_{uuid.uuid4().hex}"
    signatures = " ".join(Webhook(secret).sign(message_id, now, text) for secret in signing_secrets)
    headers = {
        "svix-id": message_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": signatures,
        "content-type": "application/json",
    }
    return Signed("clerk", message_id, text.encode(), headers)


# --- Asaas ---------------------------------------------------------------------------------


def asaas_delivery(event_type: str, options: Options, now: datetime | None = None) -> dict[str, Any]:
    object_kind = _asaas_object(event_type)
    name = event_type if (FOLDER / "asaas" / f"{event_type}.json").exists() else _ASAAS_BASE_EXAMPLE[object_kind]
    body = copy.deepcopy(example("asaas", name))
    now = (now or datetime.now(UTC)).astimezone(ASAAS_TIMEZONE)
    body.update(id=f"evt_{uuid.uuid4().hex}&{secrets.randbelow(10**9)}", event=event_type)
    body["dateCreated"] = now.strftime("%Y-%m-%d %H:%M:%S")
    obj = body[object_kind]
    obj["externalReference"] = f"{options.user}|{options.plan}"
    obj["customer"] = f"cus_{_short_hash(options.user)}"
    if object_kind == "payment":
        _asaas_payment(obj, event_type, options, now)
    elif object_kind == "subscription":
        obj.update(id=f"sub_{_short_hash(options.user + options.plan)}", value=float(options.value))
        obj["dateCreated"] = now.strftime("%d/%m/%Y")
    return body


def _asaas_payment(payment: dict[str, Any], event_type: str, options: Options, now: datetime) -> None:
    today = now.strftime("%Y-%m-%d")
    payment.update(
        id=options.payment or f"pay_{uuid.uuid4().hex[:12]}",
        subscription=f"sub_{_short_hash(options.user + options.plan)}",
        value=float(options.value),
        netValue=float((options.value * Decimal("0.95")).quantize(Decimal("0.01"))),
        dateCreated=today,
        dueDate=today,
    )
    for field in ("confirmedDate", "paymentDate", "clientPaymentDate", "creditDate"):
        if payment.get(field):  # the example's dates, where it has them, become today's
            payment[field] = today
    refunds = payment.get("refunds")
    if isinstance(refunds, list) and refunds:
        refunded = options.value if event_type == "PAYMENT_REFUNDED" else options.refunded or options.value / 2
        refunds[0].update(value=float(refunded), dateCreated=now.strftime("%Y-%m-%d %H:%M:%S"))


def _asaas_object(event_type: str) -> str:
    if event_type not in ASAAS_EVENTS:
        raise DeliveryError(f"Asaas {event_type} is not a documented event type")
    return next(
        kind
        for prefix, kind in (("PAYMENT_", "payment"), ("SUBSCRIPTION_", "subscription"), ("CHECKOUT_", "checkout"))
        if event_type.startswith(prefix)
    )


def sign_asaas(body: dict[str, Any], tokens: list[str]) -> Signed:
    """As Asaas sends it: the configured token in `asaas-access-token` (the newest of a rotation)."""
    if not tokens:
        raise DeliveryError("ASAAS_WEBHOOK_TOKEN is not set: send authenticates with the receiver's token")
    headers = {"asaas-access-token": tokens[-1], "content-type": "application/json"}
    return Signed("asaas", body["id"], json.dumps(body).encode(), headers)


# --- sending -------------------------------------------------------------------------------


def post(url: str, delivery: Signed, timeout: float = 10) -> Answer:
    request = urllib.request.Request(url, data=delivery.body, headers=delivery.headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"cannot reach the receiver at {url}: {reason}") from exc


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
