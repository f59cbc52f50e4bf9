"""Replay inbox rows (`inbox replay`, the console's replay button), with its audit entry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.audit import AuditEntry
from ops.audit import Actor, record
from ops.queries.inbox_rows import ids_with_status
from worker.inbox.replay import requeue
from worker.task_base import send_follow_ups

ACTION = "inbox.replay"


@dataclass(frozen=True)
class Replayed:
    inbox_ids: list[int]  # put back to pending (enqueued once that committed)
    enqueued: int
    audit_id: int


def replay(
    sessions: sessionmaker[Session],
    app: Celery,
    actor: Actor,
    inbox_ids: tuple[int, ...] = (),
    statuses: tuple[str, ...] = (),
    since: datetime | None = None,
) -> Replayed:
    """Rows by id (any status but pending, processed included) and every row with one of
    `statuses` (received since `since`): back to pending, then enqueued after the commit."""
    with sessions() as session:
        with session.begin():
            replayed = requeue(session, list(inbox_ids), include_processed=True)
            if statuses:
                replayed += requeue(session, ids_with_status(session, statuses, since))
            entry = record(
                session,
                actor,
                ACTION,
                target=_target(inbox_ids, statuses),
                outcome=f"{len(replayed)} row(s) put back to pending" if replayed else "nothing to replay",
                details={
                    "requested_ids": list(inbox_ids),
                    "statuses": list(statuses),
                    "since": since.isoformat() if since else None,
                    "inbox_ids": replayed,
                },
            )
            audit_id = entry.id
        sent = send_follow_ups(session, app)
    return Replayed(replayed, sent, audit_id)


def replays_of(session: Session, inbox_id: int, limit: int = 5) -> list[AuditEntry]:
    """The replays that put this row back to pending, newest first."""
    statement = (
        select(AuditEntry)
        .where(AuditEntry.action == ACTION, AuditEntry.details["inbox_ids"].contains([inbox_id]))
        .order_by(AuditEntry.id.desc())
        .limit(limit)
    )
    return list(session.scalars(statement))


def _target(inbox_ids: tuple[int, ...], statuses: tuple[str, ...]) -> str:
    parts = []
    if inbox_ids:
        parts.append("inbox " + ", ".join(str(i) for i in inbox_ids))
    if statuses:
        parts.append("status " + ", ".join(statuses))
    return "; ".join(parts)
