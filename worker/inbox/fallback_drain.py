"""Moves the deliveries the receiver queued in the fallback store (PostgreSQL was down) into the
inbox. Each entry: verified, INSERTed deduplicated on the provider's event id, COMMITted, its
`webhooks.process` enqueued, and only then removed from the store. A kill at any point leaves the
entry pending, to be taken again (a second INSERT finds the row: a duplicate, removed). While
PostgreSQL is down the drain takes nothing, or stops, and leaves every entry in the store. A
forged entry is logged and removed, and stores nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from messaging.fallback_store import Entry, FallbackStore
from messaging.ingest_message import ForgedIngestMessage, IngestSigner
from models.db import once_more_if_disconnected
from models.inbox import record_delivery
from models.settings import Settings

log = logging.getLogger(__name__)

# Entries taken per read; a run stops after RUN_LIMIT so it stays far inside the task time limit
# (the next run, due in seconds, goes on).
BATCH = 100
RUN_LIMIT = 2000

_stores: dict[int, FallbackStore] = {}


@dataclass
class Drained:
    stored: int = 0  # new inbox rows
    duplicates: int = 0  # already in the inbox (a re-sent delivery, or an entry taken twice)
    refused: int = 0  # forged entries, removed
    failed: int = 0  # entries that raised something else: left pending, retried by a later run
    database_down: bool = False  # stopped early: the entries are left in the store

    def summary(self) -> dict[str, int]:
        return {name: int(value) for name, value in asdict(self).items()}


def store_for_process(settings: Settings) -> FallbackStore:
    """One client per process (keyed on the pid: a connection never crosses a fork)."""
    pid = os.getpid()
    if pid not in _stores:
        _stores[pid] = FallbackStore(redis.Redis.from_url(settings.redis_url.get_secret_value()))
    return _stores[pid]


def consumer_name() -> str:
    """This process's name in the consumer group: what it took stays pending under this name."""
    return f"{socket.gethostname()}:{os.getpid()}"


def drain(
    store: FallbackStore,
    signer: IngestSigner,
    sessions: sessionmaker[Session],
    enqueue: Callable[[int], object],
    claim_idle_seconds: float,
) -> Drained:
    """Move what the store holds into the inbox, until it is empty, RUN_LIMIT entries were seen,
    or PostgreSQL is unreachable."""
    result = Drained()
    store.ensure_group()
    if store.length() == 0:
        return result  # the usual case: no outage, nothing to do, no round trip to PostgreSQL
    try:
        _check_database(sessions)
    except (OperationalError, InterfaceError) as exc:
        # Take nothing while PostgreSQL is down: an entry taken now would wait, pending under
        # this process's name, for this process's next drain or for FALLBACK_CLAIM_IDLE_SECONDS.
        log.warning("fallback.drain database_unavailable error=%s: entries left in the store", type(exc).__name__)
        result.database_down = True
        return result
    consumer = consumer_name()
    seen = 0
    while seen < RUN_LIMIT and (entries := store.take(consumer, BATCH, claim_idle_seconds)):
        failed_before = result.failed
        for entry in entries:
            seen += 1
            try:
                _move(entry, store, signer, sessions, enqueue, result)
            except (OperationalError, InterfaceError) as exc:
                log.warning(
                    "fallback.drain database_unavailable error=%s: entries left in the store", type(exc).__name__
                )
                result.database_down = True
                return result
            except DBAPIError:
                # Not the connection: this entry's own problem. Left pending (retried by later
                # runs, never dropped); the others must not wait behind it.
                log.exception("fallback.drain could not store entry %s", entry.entry_id)
                result.failed += 1
        if result.failed - failed_before == len(entries):
            break  # nothing but failures: taking the same entries again in this run is no use
    return result


def _check_database(sessions: sessionmaker[Session]) -> None:
    # The worker's pool does not pre-ping: a pooled connection PostgreSQL dropped fails once,
    # and the pool is then rebuilt. Only a second failure means PostgreSQL is down.
    for attempt in once_more_if_disconnected():
        with attempt, sessions.begin() as session:
            session.execute(text("SELECT 1"))


def _move(
    entry: Entry,
    store: FallbackStore,
    signer: IngestSigner,
    sessions: sessionmaker[Session],
    enqueue: Callable[[int], object],
    result: Drained,
) -> None:
    if entry.fields is None:  # deleted while pending: nothing left to store
        store.done(entry.entry_id)
        return
    try:
        delivery = signer.open_entry(entry.fields)
    except ForgedIngestMessage as exc:
        log.warning(
            "fallback.drain refused entry %s: %s (fields %s)", entry.entry_id, exc, ", ".join(sorted(entry.fields))
        )
        result.refused += 1
        store.done(entry.entry_id)
        return
    with sessions.begin() as session:
        inbox_id = record_delivery(session, **delivery)
    # Committed: from here the inbox holds it, whatever happens to the entry.
    if inbox_id is None:
        result.duplicates += 1
    else:
        result.stored += 1
        _enqueue(enqueue, inbox_id)
    store.done(entry.entry_id)


def _enqueue(enqueue: Callable[[int], object], inbox_id: int) -> None:
    try:
        enqueue(inbox_id)
    except Exception:
        # The row is committed `pending`: inbox.sweep re-enqueues a row whose message is missing.
        log.exception("fallback.drain could not enqueue webhooks.process for inbox row %s", inbox_id)
