"""The inbox's hot lookups keep their partial indexes in the plan PostgreSQL caches.

psycopg prepares a statement after its fifth run, and PostgreSQL may then run one generic plan,
built without the parameters' values. A status sent as a parameter cannot match a partial
index's `WHERE status = '...'`, so such a plan scans the whole inbox, which only grows. These
tests build the generic plan of the exact statements the service sends."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from psycopg import sql
from sqlalchemy import Executable, text
from sqlalchemy.orm import Session

from models.settings import load_settings
from worker.billing.waiting_events import unmatched_for_user
from worker.inbox.processing import _FINISH_AND_REPLAY
from worker.inbox.sweep import sweepable_query


def generic_plan(session: Session, statement: Executable, params: dict[str, Any]) -> str:
    """EXPLAIN of `statement`'s generic plan (PREPARE, then EXECUTE under force_generic_plan)."""
    compiled = statement.compile(dialect=session.get_bind().dialect)
    values = compiled.construct_params(params)
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"${len(names)}"

    prepared = re.sub(r"%\((\w+)\)s", placeholder, str(compiled))
    raw = session.connection().connection.dbapi_connection
    literals = sql.SQL(", ").join(sql.Literal(values[name]) for name in names).as_string(raw)
    session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
    types = ", ".join(_PG_TYPES[type(values[name])] for name in names)
    session.execute(text(f"PREPARE checked{f'({types})' if names else ''} AS {prepared}"))
    try:
        execute = "EXPLAIN EXECUTE checked" + (f"({literals})" if names else "")
        return "\n".join(session.execute(text(execute)).scalars())
    finally:
        session.execute(text("DEALLOCATE checked"))


# What psycopg sends each parameter as, for PREPARE (the compiled SQL casts only some of them).
_PG_TYPES = {str: "text", int: "bigint", bool: "boolean", type(None): "text", timedelta: "interval"}


def test_the_replay_lookup_uses_the_index_on_unmatched_rows(session):
    plan = generic_plan(session, unmatched_for_user_statement(), {"clerk_user_id": "user_1"})
    assert "webhook_inbox_unmatched_idx" in plan, plan


def test_the_rows_final_update_finds_waiting_events_through_that_index(session):
    params = {"inbox_id": 1, "final_status": "processed", "final_detail": None, "clerk_user_id": "user_1"}
    plan = generic_plan(session, _FINISH_AND_REPLAY, params)
    assert "webhook_inbox_unmatched_idx" in plan, plan
    assert "Seq Scan on webhook_inbox" not in plan, plan


def test_the_sweeper_finds_pending_rows_through_their_index(session):
    plan = generic_plan(session, sweepable_query(load_settings(), None), {})
    assert "webhook_inbox_pending_enqueued_at_idx" in plan, plan


def unmatched_for_user_statement() -> Executable:
    from sqlalchemy import Text, bindparam

    return unmatched_for_user(bindparam("clerk_user_id", type_=Text))
