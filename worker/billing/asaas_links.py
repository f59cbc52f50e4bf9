"""Who an Asaas object belongs to: its `externalReference`, else a link learned earlier.

The app writes `externalReference` as `<clerkUserId>` or `<clerkUserId>|<planKey>`. Every event
that carries a readable reference teaches us its Asaas customer and subscription ids
(`provider_links`), so later events without a reference still find their user and plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.billing import ProviderLink
from models.locks import asaas_link_lock, lock_names

PROVIDER = "asaas"
CLERK_USER_ID_PREFIX = "user_"  # Clerk user ids look like user_29w83sxmDNGwOuEthce5gg56FcC


@dataclass(frozen=True)
class Reference:
    clerk_user_id: str
    plan_key: str | None


@dataclass(frozen=True)
class Owner:
    clerk_user_id: str
    plan_key: str | None  # from the reference
    subscription_plan_key: str | None  # stored for the Asaas subscription
    found_by: str  # how, for the inbox row's detail
    learned_link: bool = False  # this event taught a customer/subscription link not known before


def parse_external_reference(value: object) -> Reference | None:
    """`<clerkUserId>` or `<clerkUserId>|<planKey>`; None for anything else (other systems'
    references on the same Asaas account, e.g. an order number)."""
    if not isinstance(value, str):
        return None
    user_part, _, plan_part = value.strip().partition("|")
    user_part, plan_part = user_part.strip(), plan_part.strip()
    if not user_part.startswith(CLERK_USER_ID_PREFIX) or any(c.isspace() for c in user_part):
        return None
    return Reference(user_part, plan_part or None)


def asaas_ids(obj: dict[str, Any], object_kind: str) -> dict[str, str]:
    """The Asaas customer and subscription ids an event object carries, by link kind."""
    subscription_id = obj.get("id") if object_kind == "subscription" else obj.get("subscription")
    found = {"customer": obj.get("customer"), "subscription": subscription_id}
    return {kind: value for kind, value in found.items() if isinstance(value, str) and value}


def resolve_owner(session: Session, obj: dict[str, Any], object_kind: str) -> Owner | None:
    """Who the object belongs to. The locks of the Asaas ids it carries are held until the
    transaction ends: an event that learns a link and an event that looks for that link take
    turns, so the one that finds nothing is `unmatched` before the learner's replay looks."""
    ids = asaas_ids(obj, object_kind)
    lock_names(session, *(asaas_link_lock(kind, external_id) for kind, external_id in ids.items()))
    reference = parse_external_reference(obj.get("externalReference"))
    if reference is not None:
        learned = [_remember_link(session, kind, external_id, reference) for kind, external_id in ids.items()]
        return Owner(
            reference.clerk_user_id,
            reference.plan_key,
            _subscription_plan_key(session, ids.get("subscription")),
            "externalReference",
            learned_link=any(learned),
        )
    for kind in ("subscription", "customer"):
        link = _link(session, kind, ids.get(kind))
        if link is not None:
            return Owner(
                link.clerk_user_id,
                None,
                _subscription_plan_key(session, ids.get("subscription")),
                f"link of {kind} {link.external_id}",
            )
    return None


def describe_unresolved(obj: dict[str, Any], object_kind: str) -> str:
    ids = ", ".join(f"{kind} {value}" for kind, value in asaas_ids(obj, object_kind).items()) or "no ids"
    return (
        f"no user: externalReference {obj.get('externalReference')!r} names no Clerk user "
        f"and no link is known for {ids}"
    )


def _remember_link(session: Session, kind: str, external_id: str, reference: Reference) -> bool:
    """Store (or refresh) the link; True if it was not known before."""
    statement = insert(ProviderLink).values(
        provider=PROVIDER,
        kind=kind,
        external_id=external_id,
        clerk_user_id=reference.clerk_user_id,
        plan_key=reference.plan_key,
    )
    inserted = session.execute(
        statement.on_conflict_do_update(
            index_elements=[ProviderLink.provider, ProviderLink.kind, ProviderLink.external_id],
            set_={
                "clerk_user_id": reference.clerk_user_id,
                # A reference without a plan key keeps the plan learned before.
                "plan_key": func.coalesce(statement.excluded.plan_key, ProviderLink.plan_key),
                "updated_at": func.now(),
            },
        ).returning(literal_column("xmax = 0", Boolean))  # PostgreSQL: true for an inserted row
    ).scalar_one()
    return bool(inserted)


def _link(session: Session, kind: str, external_id: str | None) -> ProviderLink | None:
    if not external_id:
        return None
    return session.scalar(
        select(ProviderLink).where(
            ProviderLink.provider == PROVIDER,
            ProviderLink.kind == kind,
            ProviderLink.external_id == external_id,
        )
    )


def _subscription_plan_key(session: Session, subscription_id: str | None) -> str | None:
    link = _link(session, "subscription", subscription_id)
    return link.plan_key if link is not None else None
