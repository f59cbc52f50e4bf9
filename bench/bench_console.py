"""The console's inbox page over 1,000,000 inbox rows: time per filter, median of several runs.

    python bench/bench_console.py [--rows 1000000] [--runs 15]

Fills a scratch database (its own, dropped at the end) with a year of deliveries and as many
ledger entries, then times
GET /inbox for each filter through the console app (Flask's test client: the query, the page,
no network) and the query alone (`ops.queries.inbox_rows.inbox_page`); then a user's page, the
overview (/), and what migration 0010's indexes cost the receiver's INSERT. Figures: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.db import make_engine, make_session_factory  # noqa: E402
from ops.queries.inbox_rows import InboxQuery, inbox_page  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402

USERS = 50_000
BENCH_USER = "user_004242"  # 20 inbox rows name it
LOGIN = ("bench", "bench-password")

# One statement: a year of deliveries, ids in arrival order; 60 % Clerk, 40 % Asaas; 97 % processed.
FILL = """
INSERT INTO {schema}.webhook_inbox
    (source, external_id, event_type, payload, received_at, status, attempts, processed_at, enqueued_at)
SELECT source, external_id, event_type, payload, received_at, status, 1, received_at, received_at
FROM (
    SELECT n,
        CASE WHEN n % 5 < 3 THEN 'clerk' ELSE 'asaas' END AS source,
        CASE WHEN n % 5 < 3 THEN 'msg_' ELSE 'evt_' END || md5(n::text) AS external_id,
        (CASE WHEN n % 5 < 3
            THEN (ARRAY['user.created', 'user.updated', 'user.updated', 'paymentAttempt.updated',
                        'subscriptionItem.active', 'subscription.active'])[1 + (n / 5) % 6]
            ELSE (ARRAY['PAYMENT_CREATED', 'PAYMENT_CONFIRMED', 'PAYMENT_RECEIVED', 'SUBSCRIPTION_CREATED',
                        'PAYMENT_CREATED', 'PAYMENT_CONFIRMED', 'PAYMENT_RECEIVED',
                        'PAYMENT_CREATED', 'PAYMENT_CONFIRMED'])[1 + (n / 5) % 9]
        END) AS event_type,
        'user_' || lpad(((n::bigint * 7919) % {users})::text, 6, '0') AS clerk_user_id,
        now() - interval '365 days' + (n * interval '365 days' / {rows}) AS received_at,
        CASE WHEN n % 1000 < 970 THEN 'processed'
             WHEN n % 1000 < 985 THEN 'ignored'
             WHEN n % 1000 < 991 THEN 'unmatched'
             WHEN n % 1000 < 994 THEN 'needs_attention'
             WHEN n % 1000 < 997 THEN 'failed'
             ELSE 'pending' END AS status
    FROM generate_series(1, {rows}) AS n
) AS rows
CROSS JOIN LATERAL (SELECT CASE WHEN source = 'clerk' THEN
    jsonb_build_object('type', event_type, 'object', 'event', 'data',
        CASE WHEN event_type LIKE 'user.%' THEN jsonb_build_object('id', clerk_user_id, 'first_name', 'Ana')
             ELSE jsonb_build_object('id', 'x_' || n, 'payer', jsonb_build_object('user_id', clerk_user_id)) END)
    ELSE jsonb_build_object('id', external_id, 'event', event_type, 'payment', jsonb_build_object(
        'id', 'pay_' || n, 'customer', 'cus_' || clerk_user_id, 'value', 49.9,
        'externalReference', clerk_user_id || '|pro'))
    END AS payload) AS built
"""


# As many ledger entries as inbox rows, spread over the same users (a user's page reads its own).
FILL_LEDGER = """
INSERT INTO {schema}.credit_ledger
    (user_id, clerk_user_id, credit_balance_id, delta, balance_after, kind, idempotency_key, reference, created_at)
SELECT 'u_' || clerk_user_id, clerk_user_id, 'cb_' || clerk_user_id, delta,
       sum(delta) OVER (PARTITION BY clerk_user_id ORDER BY n), 'usage', 'bench:' || n, 'bench', at
FROM (
    SELECT n, 'user_' || lpad(((n::bigint * 7919) % {users})::text, 6, '0') AS clerk_user_id,
           CASE WHEN n % 10 = 0 THEN 500 ELSE -5 END AS delta,
           now() - interval '365 days' + (n * interval '365 days' / {rows}) AS at
    FROM generate_series(1, {rows}) AS n
) AS entries
"""


def fill(engine: Any, schema: str, rows: int) -> None:
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(FILL.format(schema=schema, users=USERS, rows=rows)))
        conn.execute(text(FILL_LEDGER.format(schema=schema, users=USERS, rows=rows)))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {schema}.webhook_inbox"))
        conn.execute(text(f"VACUUM ANALYZE {schema}.credit_ledger"))
    print(
        f"filled {rows:,} inbox rows and {rows:,} ledger entries in {time.perf_counter() - started:.0f} s", flush=True
    )


def filters(engine: Any, schema: str) -> dict[str, dict[str, str]]:
    """Each filter as the console's query string, with values found in the data."""
    with engine.connect() as conn:
        middle = conn.scalar(text(f"SELECT (max(id) + min(id)) / 2 FROM {schema}.webhook_inbox"))
        event_id = conn.scalar(text(f"SELECT external_id FROM {schema}.webhook_inbox WHERE id = :id"), {"id": middle})
    start = datetime.now(UTC) - timedelta(days=182)
    window = {"received_from": f"{start:%Y-%m-%dT%H:%M}", "received_to": f"{start + timedelta(days=2):%Y-%m-%dT%H:%M}"}
    return {
        "newest (no filter)": {},
        "a page deep in the table (before=middle id)": {"before": str(middle)},
        "status failed": {"status": "failed"},
        "status processed": {"status": "processed"},
        "status pending or unmatched": {"status": ["pending", "unmatched"]},
        "source asaas, type PAYMENT_CONFIRMED": {"source": "asaas", "type": "PAYMENT_CONFIRMED"},
        "type subscription.active": {"type": "subscription.active"},
        "type never seen (PAYMENT_REFUNDED)": {"type": "PAYMENT_REFUNDED"},
        "received in a 2-day window 6 months ago": window,
        "provider event id": {"event_id": event_id},
        "Clerk user id in the payload": {"user": BENCH_USER},
        "user and status processed": {"user": BENCH_USER, "status": "processed"},
        "status failed, source clerk, 2-day window": {"status": "failed", "source": "clerk", **window},
    }


LEDGER_INDEXES = ("credit_ledger_clerk_user_id_idx", "credit_ledger_credit_balance_id_idx")


def user_page(client: Any, engine: Any, schema: str, runs: int) -> None:
    """A user's page with migration 0010's ledger indexes, then without them."""
    for label in ("with the ledger indexes", "without them"):
        median, worst = timed(runs, lambda: client.get(f"/users/{BENCH_USER}", auth=LOGIN))
        print(f"{'user page (/users/<id>), ' + label:46s} {median:10.1f} / {worst:7.1f}", flush=True)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for index in LEDGER_INDEXES:
                conn.execute(text(f"DROP INDEX IF EXISTS {schema}.{index}"))


def add_user(sessions: Any, clerk_user_id: str) -> None:
    """The User behind one of the data set's ids, with a balance (the trigger's ledger entry)."""
    from models.app import CreditBalance, User

    with sessions.begin() as session:
        user = User(clerk_id=clerk_user_id, email=None, name="Bench")
        user.credit_balance = CreditBalance(clerk_user_id=clerk_user_id, credits_remaining=100)
        session.add(user)


def as_query(params: dict[str, str]) -> InboxQuery:
    """The query the page builds (the bench times it alone too)."""
    from ops.console.inbox_filters import parse_filters

    return parse_filters(params).query


def timed(runs: int, call: Any) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


CONSOLE_INDEXES = (
    "webhook_inbox_status_id_idx",
    "webhook_inbox_event_type_id_idx",
    "webhook_inbox_received_at_idx",
    "webhook_inbox_payload_names_idx",
)


def insert_cost(database_url: str, schema: str, rounds: int, per_round: int) -> None:
    """What migration 0010's inbox indexes cost the receiver: its statement (one INSERT ... ON
    CONFLICT DO NOTHING RETURNING id per delivery, autocommit) into two copies of the inbox, one
    with every index and one without the console's, rounds alternating between them."""
    from tests.support.databases import libpq_url

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        definitions = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'webhook_inbox'",
            (schema,),
        ).fetchall()
        for copy, left_out in (("inbox_all_indexes", ()), ("inbox_without_console_indexes", CONSOLE_INDEXES)):
            columns = "INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS"
            conn.execute(f"CREATE TABLE {schema}.{copy} (LIKE {schema}.webhook_inbox {columns})")
            for name, definition in definitions:
                if name not in left_out:
                    on_copy = f"INDEX {copy}_{name} ON {schema}.{copy} "
                    conn.execute(definition.replace(f"INDEX {name} ON {schema}.webhook_inbox ", on_copy))
        times: dict[str, list[float]] = {"inbox_all_indexes": [], "inbox_without_console_indexes": []}
        for round_number in range(rounds):
            for table, found in times.items():
                sql = (
                    f"INSERT INTO {schema}.{table} (source, external_id, event_type, payload) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (source, external_id) DO NOTHING RETURNING id"
                )
                started = time.perf_counter()
                for n in range(per_round):
                    conn.execute(
                        sql, ("clerk", f"{round_number}-{n}", "x", _payment_attempt(round_number, n))
                    ).fetchone()
                found.append((time.perf_counter() - started) / per_round * 1e6)
    with_all, without = (statistics.median(found) for found in times.values())
    print(f"receiver INSERT: {with_all:.0f} us with the console's indexes, {without:.0f} us without", end=" ")
    print(f"(median of {rounds} alternating rounds of {per_round})")


def _payment_attempt(round_number: int, n: int) -> str:
    """A Clerk payment attempt of one of the data set's users (a new attempt id each time)."""
    data = {"id": f"pa_{round_number}_{n}", "payer": {"user_id": f"user_{(n * 7919) % USERS:06d}"}}
    return json.dumps({"type": "paymentAttempt.updated", "object": "event", "data": data})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--insert-rounds", type=int, default=9)
    args = parser.parse_args()
    with ExitStack() as stack:
        settings, _, database_url = scratch_environment(stack, CONSOLE_BASIC_AUTH=":".join(LOGIN), LOG_LEVEL="WARNING")
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        fill(engine, settings.service_schema, args.rows)
        sessions = make_session_factory(engine)
        from ops.console.app import create_app

        client = create_app().test_client()
        print(f"{'filter':46s} {'page ms (median/max)':>22s} {'query ms':>10s} rows")
        for name, params in filters(engine, settings.service_schema).items():
            query = as_query(params)
            with sessions() as session:
                shown = len(inbox_page(session, query).rows)

            def query_only(query: InboxQuery = query) -> None:
                with sessions() as session:
                    inbox_page(session, query)

            def page(params: dict[str, str] = params) -> None:
                answer = client.get("/inbox", query_string=params, auth=LOGIN)
                assert answer.status_code == 200, answer.status_code

            page_median, page_max = timed(args.runs, page)
            query_median, _ = timed(args.runs, query_only)
            print(f"{name:46s} {page_median:10.1f} / {page_max:7.1f} {query_median:10.1f} {shown}", flush=True)
        add_user(sessions, BENCH_USER)
        user_page(client, engine, settings.service_schema, args.runs)
        overview_median, overview_max = timed(max(3, args.runs // 3), lambda: client.get("/", auth=LOGIN))
        print(f"{'overview (/): counts every row, as `status` does':46s} {overview_median:10.1f} / {overview_max:7.1f}")
        insert_cost(database_url, settings.service_schema, rounds=args.insert_rounds, per_round=2000)


if __name__ == "__main__":
    main()
