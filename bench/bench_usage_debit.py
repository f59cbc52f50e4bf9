"""Debits through a real worker (batched), against same-run baselines; median of several rounds.

    python bench/bench_usage_debit.py [--rounds 3] [--debits 2000] [--users 1000] [--concurrency 2]

How it measures: BENCHMARKS.md ("What each script does"). Not part of the test suite (pytest
collects tests/ only).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pedro_credits import CreditsClient  # noqa: E402

from messaging.celery_config import USAGE_QUEUE, create_producer  # noqa: E402
from models.db import make_engine, make_session_factory  # noqa: E402
from models.ids import cuid  # noqa: E402
from tests.support.celery_worker import WorkerProcess  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402
from tests.support.usage import credits_client, make_user  # noqa: E402
from worker.usage import debits  # noqa: E402

PLENTY = 10**9  # credits per user: the benchmark measures applied debits, not refusals
IN_FLIGHT = (1, 8, 32)
ROUND_TRIPS = {1: 200, 8: 400, 32: 960}  # round trips per figure, per number in flight


def timed(count: int, run: Callable[[], Counter]) -> tuple[float, Counter]:
    start = time.perf_counter()
    statuses = run()
    return count / (time.perf_counter() - start), statuses


def send_debits(client: CreditsClient, users: list[str], count: int, prefix: str) -> list:
    return [
        client.send_debit(users[n % len(users)], "AI_TEXT_CHAT", f"{prefix}-{n}", cost=1, wait=300)
        for n in range(count)
    ]


def send_noops(producer, count: int) -> list:
    return [producer.send_task("celery.accumulate", args=(n,), queue=USAGE_QUEUE) for n in range(count)]


def drained(producer, worker: WorkerProcess, send: Callable[[], list]) -> tuple[float, Counter]:
    """Fire and drain, the worker alone: the worker stops consuming `usage`, everything is sent,
    the worker consumes again; the rate is the count over the time from then to the last answer
    stored (`date_done`), so the client's own sending and waiting is not measured."""
    producer.control.cancel_consumer(USAGE_QUEUE, destination=[worker.name], reply=True)
    sent = send()
    start = datetime.now(UTC)
    producer.control.add_consumer(USAGE_QUEUE, destination=[worker.name], reply=True)
    answers = [finished(result) for result in sent]
    done = max(_aware(producer.AsyncResult(result.task_id).date_done) for result in sent)
    statuses = Counter(answer["status"] if isinstance(answer, dict) else "done" for answer in answers)
    return len(sent) / (done - start).total_seconds(), statuses


def finished(result: Any) -> Any:
    """The answer of a debit (a pedro_credits Pending) or of a no-op task (a Celery AsyncResult)."""
    return result.answer() if hasattr(result, "answer") else result.get(timeout=300)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def round_trips(settings, in_flight: int, total: int, send: Callable) -> list[float]:
    """`in_flight` client threads, each with its own producer, each sending one request and
    waiting for its answer, `total` round trips in all. Returns the latencies in ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = total // in_flight

    def client_thread(number: int) -> None:
        producer = create_producer(settings)
        mine = []
        try:
            for n in range(per_thread):
                start = time.perf_counter()
                finished(send(producer, f"{number}-{n}"))
                mine.append((time.perf_counter() - start) * 1000)
        finally:
            producer.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def debit_sender(users: list[str], prefix: str) -> Callable:
    clients: dict[str, CreditsClient] = {}  # one per broker, as a service keeps one

    def send(producer, key: str):
        url = producer.conf.broker_url
        if url not in clients:
            clients[url] = credits_client(url)
        user = users[sum(map(ord, key)) % len(users)]
        return clients[url].send_debit(user, "AI_TEXT_CHAT", f"{prefix}-{key}", cost=1)

    return send


def hold_sender(users: list[str], prefix: str, wait_for_capture: bool) -> Callable:
    """A hold of 2 credits, then its capture of 1: the capture's answer awaited, or only sent (a
    caller that books what the work cost and goes on; the answer is in `outcome` later)."""
    clients: dict[str, CreditsClient] = {}

    class HoldThenCapture:
        def __init__(self, client: CreditsClient, user: str, key: str) -> None:
            self.client, self.user, self.key = client, user, key

        def answer(self) -> dict:
            held = self.client.hold(self.user, "AI_TEXT_CHAT", self.key, credits=2, expires_in=600)
            assert held["status"] == "held", held
            capture = self.client.send_capture(self.key, 1)
            return capture.answer() if wait_for_capture else held

    def send(producer, key: str):
        url = producer.conf.broker_url
        if url not in clients:
            clients[url] = credits_client(url)
        return HoldThenCapture(clients[url], users[sum(map(ord, key)) % len(users)], f"{prefix}-{key}")

    return send


def send_noop(producer, _key: str):
    return producer.send_task("celery.accumulate", args=(1,), queue=USAGE_QUEUE)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def plain_loop(factory, users: list[str], count: int, prefix: str) -> Counter:
    statuses: Counter = Counter()
    for n in range(count):
        with factory.begin() as session:
            request = debits.DebitRequest(users[n % len(users)], "AI_TEXT_CHAT", f"{prefix}-{n}", cost=1)
            statuses[debits.debit(session, request)["status"]] += 1
    return statuses


# The debit's two statements as worker/usage/debits.py and worker/credits/ledger.py send them, by hand
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
# change_credits with the UsageHistory row and the stored answer as its follow-up writes.
TAKE_AND_ANSWER = """
WITH moved AS (
    UPDATE "CreditBalance" SET "creditsRemaining" = "creditsRemaining" + %(delta)s,
        "lastSyncedAt" = %(now)s, "updatedAt" = %(now)s
    WHERE id = %(balance_id)s AND (SELECT set_config('pedro_webhooks.ledger_write', 'on', true)) = 'on'
      AND "creditsRemaining" + %(delta)s >= 0
    RETURNING "userId", "clerkUserId", "creditsRemaining"),
usage AS (
    INSERT INTO "UsageHistory" (id, "userId", "creditBalanceId", "operationType", "creditsUsed", details, timestamp)
    SELECT %(usage_id)s, "userId", %(balance_id)s, %(operation)s, %(cost)s, %(details)s, %(now)s FROM moved),
answered AS (
    UPDATE {schema}.usage_requests SET status = 'applied', credits = %(cost)s, usage_id = %(usage_id)s,
        result = %(result)s || jsonb_build_object('remaining', (SELECT "creditsRemaining" FROM moved))
    WHERE idempotency_key = %(key)s AND EXISTS (SELECT FROM moved)),
entry AS (
    INSERT INTO {schema}.credit_ledger
        (user_id, clerk_user_id, credit_balance_id, delta, balance_after, kind, idempotency_key, reference)
    SELECT "userId", "clerkUserId", %(balance_id)s, %(delta)s, "creditsRemaining", 'usage', %(ledger_key)s,
           %(reference)s FROM moved
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING id)
SELECT moved."creditsRemaining", entry.id FROM moved LEFT JOIN entry ON true
"""


def psycopg_loop(database_url: str, schema: str, users: list[str], count: int, prefix: str) -> Counter:
    """Applied debits only (the benchmark's case), one transaction each, on one connection."""
    claim = sql.SQL(CLAIM_AND_FIND_ACCOUNT).format(schema=sql.Identifier(schema))
    take = sql.SQL(TAKE_AND_ANSWER).format(schema=sql.Identifier(schema))
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
                claimed, _, active, balance_id, _, _ = conn.execute(
                    claim,
                    {"key": key, "clerk_user_id": clerk_user_id, "operation": operation, "request": Jsonb(request)},
                ).fetchone()
                assert claimed is not None and active
                usage_id = cuid()
                moved = conn.execute(
                    take,
                    {
                        "delta": -cost,
                        "now": now,
                        "balance_id": balance_id,
                        "ledger_key": f"usage:{key}",
                        "reference": f"usage {operation} {key}",
                        "usage_id": usage_id,
                        "operation": operation,
                        "cost": cost,
                        "details": Jsonb(None),
                        "result": Jsonb({"status": "applied", "remaining": None, "usage_id": usage_id}),
                        "key": key,
                    },
                ).fetchone()
                assert moved is not None and moved[1] is not None
            statuses["applied"] += 1
    return statuses


def negative_balances(factory) -> int:
    with factory() as session:
        return session.scalar(text('SELECT count(*) FROM "CreditBalance" WHERE "creditsRemaining" < 0'))


def one_round(number: int, args, producer, worker, factory, settings, users: list[str]) -> dict[str, float]:
    client = credits_client(producer.conf.broker_url)
    figures: dict[str, float] = {}
    count = args.debits

    def throughput(name: str, expected: str, send: Callable[[], list]) -> None:
        rate, statuses = drained(producer, worker, send)
        assert statuses == {expected: count}, f"{name}: {dict(statuses)}"  # every answer accounted for
        figures[name] = rate

    throughput("no-op task, fire and drain /s", "done", lambda: send_noops(producer, count))
    throughput(
        f"debit, {len(users)} users, fire and drain /s",
        "applied",
        lambda: send_debits(client, users, count, f"r{number}-spread"),
    )
    throughput(
        "debit, one hot user, fire and drain /s",
        "applied",
        lambda: send_debits(client, users[:1], count, f"r{number}-hot"),
    )
    assert negative_balances(factory) == 0
    for in_flight in IN_FLIGHT:
        total = ROUND_TRIPS[in_flight]
        senders = {
            "debit": debit_sender(users, f"r{number}-rt{in_flight}"),
            "no-op": send_noop,
            "hold + capture": hold_sender(users, f"r{number}-hc{in_flight}", wait_for_capture=True),
            "hold + capture sent": hold_sender(users, f"r{number}-hs{in_flight}", wait_for_capture=False),
        }
        for name, send in senders.items():
            latencies = round_trips(settings, in_flight, total, send)
            figures[f"{name} round trip, {in_flight} in flight, p50 ms"] = percentile(latencies, 0.50)
            figures[f"{name} round trip, {in_flight} in flight, p99 ms"] = percentile(latencies, 0.99)
    figures["plain loop (debits.debit), 1 connection /s"] = timed(
        count, lambda: plain_loop(factory, users, count, f"r{number}-loop")
    )[0]
    figures["psycopg loop (same SQL by hand), 1 connection /s"] = timed(
        count,
        lambda: psycopg_loop(
            settings.database_url.get_secret_value(), settings.service_schema, users, count, f"r{number}-psycopg"
        ),
    )[0]
    assert negative_balances(factory) == 0
    return figures


def report(rounds: list[dict[str, float]], args) -> None:
    print(
        f"{args.debits} debits per throughput figure, {args.users} users, 1 worker x {args.concurrency}"
        f" processes (usage queue), {os.cpu_count()} CPUs, median of {len(rounds)} rounds"
        f" (load average at the end: {os.getloadavg()[0]:.2f})"
    )
    median = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    for name, value in median.items():
        each = " ".join(f"{r[name]:.1f}" for r in rounds)
        print(f"  {name:52s} {value:9.1f}   rounds: {each}")

    # Each comparison is made within a round (its figures measured minutes apart at most), then
    # the median of the rounds: on a machine whose speed drifts between rounds, a ratio of two
    # medians taken from different rounds says less.
    def compare(label: str, value: Callable[[dict[str, float]], float], unit: str, goal: str = "") -> None:
        values = [value(r) for r in rounds]
        each = " ".join(f"{v:{unit}}" for v in values)
        print(f"  {label:50s} {statistics.median(values):{unit}}  {goal}  rounds: {each}")

    users = args.users
    compare(
        f"batched debit, {users} users / no-op task:",
        lambda r: r[f"debit, {users} users, fire and drain /s"] / r["no-op task, fire and drain /s"],
        ".2f",
        "(goal >= 1.5)",
    )
    compare(
        "batched debit, one hot user / no-op task:",
        lambda r: r["debit, one hot user, fire and drain /s"] / r["no-op task, fire and drain /s"],
        ".2f",
        "(goal >= 1.5)",
    )
    compare(
        "batched debit / plain loop:",
        lambda r: r[f"debit, {users} users, fire and drain /s"] / r["plain loop (debits.debit), 1 connection /s"],
        ".2f",
    )
    compare(
        "1 in flight: debit p50 - no-op p50 (ms):",
        lambda r: r["debit round trip, 1 in flight, p50 ms"] - r["no-op round trip, 1 in flight, p50 ms"],
        "+.2f",
        "(goal <= +1.5)",
    )
    compare(
        "1 in flight: debit p99 / no-op p99:",
        lambda r: r["debit round trip, 1 in flight, p99 ms"] / r["no-op round trip, 1 in flight, p99 ms"],
        ".2f",
        "(goal <= 2)",
    )
    # Issue 28's floor: the no-op's round trip plus the debit's own transaction (the psycopg loop).
    compare("1 in flight: the floor (ms):", _floor, ".2f", "(no-op p50 + one psycopg-loop transaction)")
    compare(
        "1 in flight: debit p50 - floor (ms):",
        lambda r: r["debit round trip, 1 in flight, p50 ms"] - _floor(r),
        "+.2f",
        "(goal <= +1.0)",
    )
    for in_flight in IN_FLIGHT[1:]:
        for tail in ("p50", "p99"):
            compare(
                f"{in_flight:2d} in flight: debit {tail} / no-op {tail}:",
                lambda r, n=in_flight, t=tail: (
                    r[f"debit round trip, {n} in flight, {t} ms"] / r[f"no-op round trip, {n} in flight, {t} ms"]
                ),
                ".2f",
                "(goal <= 1)",
            )
    for in_flight in IN_FLIGHT:
        for name, goal in (("hold + capture", "(goal <= 1.5)"), ("hold + capture sent", "")):
            compare(
                f"{in_flight:2d} in flight: {name} p50 / debit p50:",
                lambda r, n=in_flight, w=name: (
                    r[f"{w} round trip, {n} in flight, p50 ms"] / r[f"debit round trip, {n} in flight, p50 ms"]
                ),
                ".2f",
                goal,
            )
    print("  zero negative balances; every answer accounted for (checked each round)")


def _floor(figures: dict[str, float]) -> float:
    return (
        figures["no-op round trip, 1 in flight, p50 ms"]
        + 1000 / figures["psycopg loop (same SQL by hand), 1 connection /s"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--debits", type=int, default=2000, help="messages per throughput figure")
    parser.add_argument("--users", type=int, default=1000, help="users the spread debits go to")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes of the worker")
    args = parser.parse_args()
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C: the worker stopped, the database dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        settings, _, _ = scratch_environment(stack)
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        producer = create_producer(settings)
        stack.callback(producer.close)
        worker = WorkerProcess(producer, queues=USAGE_QUEUE, concurrency=args.concurrency)
        worker.start()
        stack.callback(worker.stop)
        factory = make_session_factory(engine)
        users = [f"user_bench_{n}" for n in range(args.users)]
        for clerk_id in users:
            make_user(factory, clerk_id, credits=PLENTY)
        for result in [
            *send_debits(credits_client(producer.conf.broker_url), users, 200, "warmup"),
            *send_noops(producer, 200),
        ]:
            finished(result)  # fork, connect, fill the caches
        rounds = []
        for number in range(args.rounds):
            rounds.append(one_round(number, args, producer, worker, factory, settings, users))
            print(f"round {number + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in rounds[-1].items()), flush=True)
        report(rounds, args)


if __name__ == "__main__":
    main()
