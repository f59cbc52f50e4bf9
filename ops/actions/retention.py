"""Prune old final inbox rows (`inbox prune`, the console's prune form), with audit entries.

Batches are transactions of their own. The first batch that deletes anything records the entry
"started" in its own transaction (an interrupted prune is on record), and the end records the
total. A dry run or a prune that finds nothing writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from ops.audit import Actor, record
from ops.queries.inbox_rows import prune_batch

ACTION = "inbox.prune"


@dataclass(frozen=True)
class Pruned:
    deleted: int
    finished: bool  # False: stopped at `max_rows`, more rows may remain


def prune(
    sessions: sessionmaker[Session],
    actor: Actor,
    older_than: timedelta,
    batch_size: int,
    *,
    max_rows: int | None = None,
    on_batch: Callable[[int], None] = lambda deleted: None,
) -> Pruned:
    details = {"older_than_seconds": int(older_than.total_seconds()), "batch_size": batch_size}
    deleted, finished = 0, False
    while max_rows is None or deleted < max_rows:
        with sessions.begin() as session:
            batch = prune_batch(session, older_than, batch_size)
            if batch and not deleted:
                record(session, actor, ACTION, target="inbox", outcome="started", details=details)
        deleted += batch
        on_batch(batch)
        if batch < batch_size:
            finished = True
            break
    if deleted:
        with sessions.begin() as session:
            outcome = f"deleted {deleted} row(s)" + ("" if finished else ", stopped before the end")
            record(session, actor, ACTION, target="inbox", outcome=outcome, details={**details, "deleted": deleted})
    return Pruned(deleted, finished)
