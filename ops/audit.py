"""The audit log (`models.audit.AuditEntry`): who did what, when, from where.

The console's actions and the CLI's writes record their entry in the transaction of the action,
so an entry means the action happened. A request refused before it acted (no login, not an
operator, no CSRF token, bad input) writes nothing. Details are plain JSON values.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.audit import AuditEntry, Channel


@dataclass(frozen=True)
class Actor:
    name: str
    channel: Channel
    address: str

    @classmethod
    def console(cls, login: str, address: str | None) -> Actor:
        return cls(login, Channel.CONSOLE, address or "unknown")

    @classmethod
    def cli(cls, name: str | None = None) -> Actor:
        return cls(name or login_name(), Channel.CLI, f"cli@{socket.gethostname()}")


def login_name() -> str:
    """The person running the CLI (a container may have a uid with no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def record(
    session: Session, actor: Actor, action: str, *, target: str | None, outcome: str, details: dict[str, Any]
) -> AuditEntry:
    """Add an entry to the caller's transaction (it commits with the action, or not at all)."""
    entry = AuditEntry(
        actor=actor.name,
        channel=actor.channel.value,
        address=actor.address,
        action=action,
        target=target,
        outcome=outcome,
        details=details,
    )
    session.add(entry)
    session.flush()
    return entry


def recent_entries(session: Session, *, limit: int = 50, before_id: int | None = None) -> list[AuditEntry]:
    """Newest first; `before_id` pages on (keyset)."""
    statement = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before_id is not None:
        statement = statement.where(AuditEntry.id < before_id)
    return list(session.scalars(statement))


def entries_about(session: Session, action: str, target: str, *, limit: int = 10) -> list[AuditEntry]:
    """The latest entries of one action on one target (a row's replays), newest first."""
    statement = (
        select(AuditEntry)
        .where(AuditEntry.action == action, AuditEntry.target == target)
        .order_by(AuditEntry.id.desc())
        .limit(limit)
    )
    return list(session.scalars(statement))
