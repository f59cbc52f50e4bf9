"""The registry that maps a delivery's (source, event type) to the function that applies it.

This is the contract between the inbox pipeline (`worker.inbox`) and the domains that apply
deliveries (`worker.users`, `worker.billing`): a handler takes the task's session and a
`Delivery`, never commits, and returns an `Outcome`. Domains register with `@handles`; the
pipeline imports them all in one place (`worker.inbox.routing`) and never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from models.inbox import InboxStatus


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Delivery:
    inbox_id: int
    source: str
    external_id: str
    event_type: str
    payload: dict[str, Any]
    # When the inbox row was stored (aware): the event's time when the provider gives none that
    # can be read. The pipeline sets it from the row; a Delivery built without one is "now".
    received_at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class Outcome:
    status: InboxStatus
    detail: str | None = None  # why, for a person reading the inbox row
    # The Clerk user this delivery made known (a new user, a newly learned Asaas link): events
    # that waited `unmatched` for that user may apply now. The pipeline replays them.
    unblocks_user: str | None = None

    @classmethod
    def processed(cls, detail: str | None = None, *, unblocks_user: str | None = None) -> Outcome:
        return cls(InboxStatus.PROCESSED, detail, unblocks_user)

    @classmethod
    def unmatched(cls, detail: str) -> Outcome:
        return cls(InboxStatus.UNMATCHED, detail)

    @classmethod
    def needs_attention(cls, detail: str) -> Outcome:
        """Logged, but the money the event should have moved did not move: a person must look."""
        return cls(InboxStatus.NEEDS_ATTENTION, detail)


Handler = Callable[[Session, Delivery], Outcome]

_exact: dict[tuple[str, str], Handler] = {}
_prefixes: list[tuple[str, str, Handler]] = []


def handles(source: str, *event_types: str, prefixes: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
    """Register the decorated function for these event types (or type prefixes) of `source`."""

    def register(handler: Handler) -> Handler:
        for event_type in event_types:
            if (source, event_type) in _exact:
                raise ValueError(f"two handlers for {source} {event_type}")
            _exact[(source, event_type)] = handler
        _prefixes.extend((source, prefix, handler) for prefix in prefixes)
        return handler

    return register


def find_handler(source: str, event_type: str) -> Handler | None:
    if handler := _exact.get((source, event_type)):
        return handler
    for prefix_source, prefix, handler in _prefixes:
        if prefix_source == source and event_type.startswith(prefix):
            return handler
    return None
