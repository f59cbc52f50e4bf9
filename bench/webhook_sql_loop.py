"""The database's ceiling for `webhooks.process` (DESIGN.md "Ceilings"): the same statements a run
of a Clerk `user.created` sends, in a plain psycopg loop, one process per pool process.

The SQL is the worker's own (its statements compiled once by SQLAlchemy), sent with its own
parameters on raw psycopg connections: the row's lock (the run's transaction, with psycopg's
BEGIN), the run's start on an autocommit connection, the user's version claim, the user's upsert
with its opening balance, the row's final status with the replay of what waited for the user,
COMMIT. No Celery, no ORM session, no handler lookup: what is left is the database's work and the
driver's.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.sql.elements import ClauseElement

from bench.service_processes import CpuMeter
from models.ids import cuid
from models.locks import _TRY_LOCK, inbox_row_lock, user_lock
from worker.credits.ledger import signup_params
from worker.inbox.processing import _FINISH_AND_REPLAY
from worker.inbox.runs import _START
from worker.users.clerk_user_events import _CLAIM_VERSION, _UPSERT_USER, display_name


@dataclass(frozen=True)
class LoopResult:
    events_per_second: float
    cpu: CpuMeter  # the loops' stretch: CPU of the loop processes ("loop"), PostgreSQL and Redis


@dataclass(frozen=True)
class Statement:
    """A statement's SQL as SQLAlchemy compiles it, with the values of its literal parameters."""

    sql: str
    fixed: dict[str, Any]

    @classmethod
    def of(cls, engine: Engine, statement: ClauseElement) -> Statement:
        compiled: Compiled = statement.compile(dialect=engine.dialect)
        return cls(str(compiled), compiled.construct_params(_check=False))

    def params(self, **values: Any) -> dict[str, Any]:
        return {**self.fixed, **values}


def run_loop(engine: Engine, database_url: str, inbox_ids: list[int], processes: int) -> LoopResult:
    """Process `inbox_ids` (pending Clerk `user.created` rows) with the worker's statements,
    split across `processes` processes started together. The CPU is read while the loop
    processes and their connections (PostgreSQL's backends serving them) are still alive."""
    statements = {
        "lock": Statement.of(engine, _TRY_LOCK),
        "start": Statement.of(engine, _START),
        "claim": Statement.of(engine, _CLAIM_VERSION),
        "upsert": Statement.of(engine, _UPSERT_USER),
        "finish": Statement.of(engine, _FINISH_AND_REPLAY),
    }
    libpq_url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    context = multiprocessing.get_context("fork")
    ready, go, done, finished = context.Barrier(processes + 1), context.Event(), context.Event(), context.Queue()
    shares = [inbox_ids[number::processes] for number in range(processes)]
    signals = (ready, go, done, finished)
    children = [context.Process(target=_child, args=(libpq_url, statements, share, *signals)) for share in shares]
    for child in children:
        child.start()
    cpu = CpuMeter(lambda: {psutil.Process(child.pid): "loop" for child in children}, ("loop",))
    ready.wait()  # every child connected and warmed up
    with cpu.measuring():
        started = time.perf_counter()
        go.set()
        for _ in children:
            finished.get(timeout=600)
        elapsed = time.perf_counter() - started
    done.set()
    for child in children:
        child.join(60)
        assert child.exitcode == 0, f"a loop process failed ({child.exitcode})"
    return LoopResult(len(inbox_ids) / elapsed, cpu)


def _child(
    libpq_url: str,
    statements: dict[str, Statement],
    inbox_ids: list[int],
    ready: Any,
    go: Any,
    done: Any,
    finished: Any,
) -> None:
    options = "-c timezone=UTC"
    with (
        psycopg.connect(libpq_url, options=options) as work,
        psycopg.connect(libpq_url, options=options, autocommit=True) as bookkeeping,
    ):
        work.execute("SELECT 1")
        work.commit()
        ready.wait()
        go.wait()
        for inbox_id in inbox_ids:
            _one_event(work, bookkeeping, statements, inbox_id)
        finished.put(True)
        done.wait()  # alive, connections open, until the CPU is read


def _one_event(
    work: psycopg.Connection[Any], bookkeeping: psycopg.Connection[Any], sql: dict[str, Statement], inbox_id: int
) -> None:
    with work.transaction():
        locked = work.execute(sql["lock"].sql, sql["lock"].params(name=inbox_row_lock(inbox_id))).fetchone()
        assert locked is not None and locked[0]
        started = bookkeeping.execute(sql["start"].sql, sql["start"].params(inbox_id=inbox_id)).fetchone()
        assert started is not None
        data = started[4]["data"]
        clerk_id = data["id"]
        version = data.get("updated_at") or data.get("created_at")
        claim = sql["claim"].params(lock_name=user_lock(clerk_id), clerk_user_id=clerk_id, version=version)
        claimed = work.execute(sql["claim"].sql, claim).fetchone()
        assert claimed is not None
        values = {
            "new_id": cuid(),
            "clerk_user_id": clerk_id,
            "new_email": None,
            "new_name": display_name(data),
            "active": True,
            **signup_params(100, reference=f"clerk {started[2]}"),
        }
        opened = work.execute(sql["upsert"].sql, sql["upsert"].params(**values)).fetchone()
        assert opened is not None and opened[1] is not None
        finished = {
            "inbox_id": inbox_id,
            "final_status": "processed",
            "final_detail": "user created with 100 signup credits",
            "clerk_user_id": clerk_id,
        }
        work.execute(sql["finish"].sql, sql["finish"].params(**finished)).fetchone()
