"""Debits per second through Celery with real workers, against same-run baselines.

    python bench/bench_usage_debit.py [--debits 2000] [--users 20] [--concurrency 2]

Creates its own database (migrated) and claims its own Redis database numbers, starts one
`celery worker` (prefork) on the `usage` queue, measures, and removes everything again:
1. usage.debit through the broker, spread over users, and on one user (row contention);
2. a no-op Celery task (`celery.accumulate`) with the same settings: Celery's own per-task cost;
3. the same debit transaction (worker.usage.debits.debit) in a plain loop in this process, no Celery;
4. the same SQL written by hand and run with psycopg alone in a loop (no SQLAlchemy): what the
   database and the driver cost, the floor for figure 3.
Not part of the test suite (pytest collects tests/ only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.db import make_engine, make_session_factory  # noqa: E402
from models.ids import cuid  # noqa: E402
from tests.support.celery_worker import WorkerProcess  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402
from tests.support.usage import make_user  # noqa: E402
from worker.celery_config import USAGE_QUEUE, create_producer  # noqa: E402
from worker.client import UsageClient  # noqa: E402
from worker.usage import debits  # noqa: E402

PLENTY = 10**9  # credits per user: the benchmark measures applied debits, not refusals


def timed(count: int, run: Callable[[], Counter]) -> tuple[float, Counter]:
    start = time.perf_counter()
    statuses = run()
    return count / (time.perf_counter() - start), statuses


def through_celery(client: UsageClient, users: list[str], count: int, prefix: str) -> Counter:
    sent = [client.debit(users[n % len(users)], "AI_TEXT_CHAT", f"{prefix}-{n}", cost=1) for n in range(count)]
    return Counter(result.get(timeout=300)["status"] for result in sent)


def noop_tasks(producer, count: int) -> Counter:
    sent = [producer.send_task("celery.accumulate", args=(n,), queue=USAGE_QUEUE) for n in range(count)]
    return Counter("done" for result in sent if result.get(timeout=300) is not None)


def plain_loop(factory, users: list[str], count: int, prefix: str) -> Counter:
    statuses: Counter = Counter()
    for n in range(count):
        with factory.begin() as session:
            request = debits.DebitRequest(users[n % len(users)], "AI_TEXT_CHAT", f"{prefix}-{n}", cost=1)
            statuses[debits.debit(session, request)["status"]] += 1
    return statuses


# The debit's three statements as worker/usage/debits.py and worker/credits/ledger.py send them, by hand
# (the current plan as worker.plans.current_plan.current_plan_query reads it: whatever its status).
CLAIM_AND_FIND_ACCOUNT = """
WITH claim AS (
    INSERT INTO {schema}.usage_requests
        (idempotency_key, kind, clerk_user_id, operation, status, request, result)
    VALUES (%(key)s, 'debit', %(clerk_user_id)s, %(operation)s, 'pending', %(request)s, '{{"status": "pending"}}')
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key)
SELECT (SELECT idempotency_key FROM claim), u.id, u."isActive", b.id, b."creditsRemaining",
       (SELECT plan_id FROM {schema}.user_plans p WHERE p.clerk_user_id = %(clerk_user_id)s
          AND p.plan_id IS NOT NULL)
FROM (SELECT 1) AS one
LEFT JOIN ("User" u JOIN "CreditBalance" b ON b."userId" = u.id) ON u."clerkId" = %(clerk_user_id)s
"""
CHANGE_CREDITS = """
WITH moved AS (
    UPDATE "CreditBalance" SET "creditsRemaining" = "creditsRemaining" + %(delta)s,
        "lastSyncedAt" = %(now)s, "updatedAt" = %(now)s
    WHERE id = %(balance_id)s AND (SELECT set_config('pedro_webhooks.ledger_write', 'on', true)) = 'on'
      AND "creditsRemaining" + %(delta)s >= 0
    RETURNING "userId", "clerkUserId", "creditsRemaining"),
entry AS (
    INSERT INTO {schema}.credit_ledger
        (user_id, clerk_user_id, credit_balance_id, delta, balance_after, kind, idempotency_key, reference)
    SELECT "userId", "clerkUserId", %(balance_id)s, %(delta)s, "creditsRemaining", 'usage', %(ledger_key)s,
           %(reference)s FROM moved
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING id)
SELECT moved."creditsRemaining", entry.id FROM moved LEFT JOIN entry ON true
"""
FINISH_WITH_USAGE = """
WITH usage AS (
    INSERT INTO "UsageHistory" (id, "userId", "creditBalanceId", "operationType", "creditsUsed", details, timestamp)
    VALUES (%(usage_id)s, %(user_id)s, %(balance_id)s, %(operation)s, %(cost)s, %(details)s, %(now)s))
UPDATE {schema}.usage_requests SET status = 'applied', result = %(result)s, credits = %(cost)s, usage_id = %(usage_id)s
WHERE idempotency_key = %(key)s
"""


def psycopg_loop(database_url: str, schema: str, users: list[str], count: int, prefix: str) -> Counter:
    """Applied debits only (the benchmark's case), one transaction each, on one connection."""
    claim, change, finish = (
        sql.SQL(statement).format(schema=sql.Identifier(schema))
        for statement in (CLAIM_AND_FIND_ACCOUNT, CHANGE_CREDITS, FINISH_WITH_USAGE)
    )
    libpq_url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    statuses: Counter = Counter()
    with psycopg.connect(libpq_url, options="-c timezone=UTC") as conn:
        for n in range(count):
            clerk_user_id, key, operation, cost = users[n % len(users)], f"{prefix}-{n}", "AI_TEXT_CHAT", 1
            request = {
                "clerk_user_id": clerk_user_id,
                "operation": operation,
                "idempotency_key": key,
                "cost": cost,
                "details": None,
            }
            now = datetime.now(UTC).replace(tzinfo=None)
            with conn.transaction():
                claimed, user_id, active, balance_id, _, _ = conn.execute(
                    claim,
                    {"key": key, "clerk_user_id": clerk_user_id, "operation": operation, "request": Jsonb(request)},
                ).fetchone()
                assert claimed is not None and active
                moved = conn.execute(
                    change,
                    {
                        "delta": -cost,
                        "now": now,
                        "balance_id": balance_id,
                        "ledger_key": f"usage:{key}",
                        "reference": f"usage {operation} {key}",
                    },
                ).fetchone()
                assert moved is not None and moved[1] is not None
                usage_id = cuid()
                result = {"status": "applied", "remaining": moved[0], "usage_id": usage_id}
                conn.execute(
                    finish,
                    {
                        "usage_id": usage_id,
                        "user_id": user_id,
                        "balance_id": balance_id,
                        "operation": operation,
                        "cost": cost,
                        "details": Jsonb(None),
                        "now": now,
                        "result": Jsonb(result),
                        "key": key,
                    },
                )
            statuses[result["status"]] += 1
    return statuses


def measure(args, producer, factory, settings) -> dict[str, tuple[float, Counter]]:
    users = [f"user_bench_{n}" for n in range(args.users)]
    for clerk_id in users:
        make_user(factory, clerk_id, credits=PLENTY)
    client = UsageClient(producer)
    through_celery(client, users, 50, "warmup")  # fork, connect, fill the caches
    return {
        "usage.debit via Celery, spread over users": timed(
            args.debits, lambda: through_celery(client, users, args.debits, "spread")
        ),
        "usage.debit via Celery, one user": timed(
            args.debits, lambda: through_celery(client, users[:1], args.debits, "one")
        ),
        "no-op Celery task (same settings)": timed(args.debits, lambda: noop_tasks(producer, args.debits)),
        "same transaction, plain loop, 1 connection": timed(
            args.debits, lambda: plain_loop(factory, users, args.debits, "loop")
        ),
        "same SQL by hand, psycopg loop, 1 connection": timed(
            args.debits,
            lambda: psycopg_loop(
                settings.database_url.get_secret_value(), settings.service_schema, users, args.debits, "psycopg"
            ),
        ),
    }


def report(figures: dict[str, tuple[float, Counter]], args) -> None:
    print(
        f"{args.debits} debits per figure, {args.users} users, 1 worker x {args.concurrency} processes,"
        f" {os.cpu_count()} CPUs"
    )
    for name, (rate, statuses) in figures.items():
        print(f"  {name:45s} {rate:8.0f}/s   {dict(statuses)}")
    celery = figures["usage.debit via Celery, spread over users"][0]
    noop = figures["no-op Celery task (same settings)"][0]
    plain, by_hand = (
        figures[name][0]
        for name in ("same transaction, plain loop, 1 connection", "same SQL by hand, psycopg loop, 1 connection")
    )
    print(f"  debit via Celery / no-op Celery task:        {celery / noop:.2f}")
    print(f"  debit via Celery / plain loop:               {celery / plain:.2f}")
    print(f"  debit via Celery / psycopg loop:             {celery / by_hand:.2f}")
    print(f"  plain loop / psycopg loop:                   {plain / by_hand:.2f}")
    print(
        f"  one user / spread:                           {figures['usage.debit via Celery, one user'][0] / celery:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debits", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with ExitStack() as stack:
        settings, _, _ = scratch_environment(stack)
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        producer = create_producer(settings)
        stack.callback(producer.close)
        worker = WorkerProcess(producer, queues=USAGE_QUEUE, concurrency=args.concurrency)
        worker.start()
        stack.callback(worker.stop)
        report(measure(args, producer, make_session_factory(engine), settings), args)


if __name__ == "__main__":
    main()
