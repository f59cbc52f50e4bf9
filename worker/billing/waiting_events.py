"""Which billing events are waiting for a user: inbox rows left `unmatched` that name them.

A billing event ends `unmatched` when its user (or the Asaas customer/subscription link that
leads to the user) is not known yet. Once it is, the pipeline (`worker.inbox.replay`) puts these
rows back to `pending`; processing them again is safe: the log, grants and reversals are all
exactly once. The payload paths that name a user are billing knowledge, so the query lives here.
"""

from __future__ import annotations

from sqlalchemy import BindParameter, ColumnElement, Select, Text, and_, func, or_, select

from models.base import constant, table_of
from models.billing import ProviderLink
from models.inbox import InboxStatus, WebhookInbox

# Core, on the tables (no ORM compile step): every new user and every new Asaas link asks this.
_INBOX = table_of(WebhookInbox)
_LINKS = table_of(ProviderLink)

ASAAS_OBJECTS = ("payment", "subscription", "checkout")


def unmatched_for_user(clerk_user_id: BindParameter[str]) -> Select[int]:
    """The ids of the unmatched rows naming this user, as a query (for a statement to embed)."""
    return (
        select(_INBOX.c.id)
        .where(
            # Written into the SQL, not bound: the plan PostgreSQL caches for a prepared statement
            # can then use the partial index on unmatched rows (with a bound status it scans the
            # whole inbox, which only grows).
            _INBOX.c.status == constant(InboxStatus.UNMATCHED.value),
            names_user(clerk_user_id),
        )
        .order_by(_INBOX.c.id)
    )


def names_user(clerk_user_id: BindParameter[str] | str) -> ColumnElement[bool]:
    """An inbox row's billing payload names this user: Clerk's payer, an Asaas
    externalReference, or an Asaas customer/subscription linked to the user."""
    return or_(_clerk_payer_is(clerk_user_id), _asaas_reference_names(clerk_user_id), _asaas_linked_to(clerk_user_id))


def _clerk_payer_is(clerk_user_id: BindParameter[str] | str) -> ColumnElement[bool]:
    return and_(
        _INBOX.c.source == constant("clerk"),
        _payload_text("data", "payer", "user_id") == clerk_user_id,
    )


def _asaas_reference_names(clerk_user_id: BindParameter[str] | str) -> ColumnElement[bool]:
    references = [
        func.split_part(_payload_text(kind, "externalReference"), constant("|"), constant(1)) == clerk_user_id
        for kind in ASAAS_OBJECTS
    ]
    return and_(_INBOX.c.source == constant("asaas"), or_(*references))


def _asaas_linked_to(clerk_user_id: BindParameter[str] | str) -> ColumnElement[bool]:
    linked = select(_LINKS.c.external_id).where(
        _LINKS.c.provider == constant("asaas"), _LINKS.c.clerk_user_id == clerk_user_id
    )
    carried = [
        _payload_text(*path).in_(linked)
        for path in (
            ("payment", "customer"),
            ("payment", "subscription"),
            ("subscription", "id"),
            ("subscription", "customer"),
            ("checkout", "customer"),
        )
    ]
    return and_(_INBOX.c.source == constant("asaas"), or_(*carried))


def _payload_text(*path: str) -> ColumnElement[str]:
    """payload #>> '{a,b}': the text at a JSON path of the row's payload (NULL if absent), the
    path written into the SQL (`constant`)."""
    assert all(key.isidentifier() for key in path)  # nothing to quote inside the array literal
    return _INBOX.c.payload.op("#>>", return_type=Text)(constant("{" + ",".join(path) + "}"))
