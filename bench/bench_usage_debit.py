"""Debits per second through Celery with real workers, against same-run baselines.

    python bench/bench_usage_debit.py [--debits 2000] [--users 20] [--concurrency 2]

Creates its own database (migrated) and claims its own Redis database number, starts one
`celery worker` (prefork) on the `usage` queue, measures, and removes everything again:
1. usage.debit through the broker, spread over users, and on one user (row contention);
2. a no-op Celery task (`celery.accumulate`) with the same settings: Celery's own per-task cost;
3. the same debit transaction (worker.usage.debit) in a plain loop in this process, no Celery.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import migrate  # noqa: E402
from models.db import make_engine, make_session_factory  # noqa: E402
from models.settings import load_settings  # noqa: E402
from tests.support.celery_worker import WorkerProcess  # noqa: E402
from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.servers import claim_redis_databases, postgres_admin_url, redis_base_url  # noqa: E402
from tests.support.usage import make_user  # noqa: E402
from worker import usage  # noqa: E402
from worker.celery_config import USAGE_QUEUE, create_producer  # noqa: E402
from worker.client import UsageClient  # noqa: E402

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
            request = usage.DebitRequest(users[n % len(users)], "AI_TEXT_CHAT", f"{prefix}-{n}", cost=1)
            statuses[usage.debit(session, request)["status"]] += 1
    return statuses


def measure(args, producer, factory) -> dict[str, tuple[float, Counter]]:
    users = [f"user_bench_{n}" for n in range(args.users)]
    for clerk_id in users:
        make_user(factory, clerk_id, credits=PLENTY)
    client = UsageClient(producer)
    through_celery(client, users, 50, "warmup")  # fork, connect, fill the caches
    return {
        "usage.debit via Celery, spread over users": timed(
            args.debits, lambda: through_celery(client, users, args.debits, "spread")),
        "usage.debit via Celery, one user": timed(
            args.debits, lambda: through_celery(client, users[:1], args.debits, "one")),
        "no-op Celery task (same settings)": timed(args.debits, lambda: noop_tasks(producer, args.debits)),
        "same transaction, plain loop, 1 connection": timed(
            args.debits, lambda: plain_loop(factory, users, args.debits, "loop")),
    }


def report(figures: dict[str, tuple[float, Counter]], args) -> None:
    print(f"{args.debits} debits per figure, {args.users} users, 1 worker x {args.concurrency} processes,"
          f" {os.cpu_count()} CPUs")
    for name, (rate, statuses) in figures.items():
        print(f"  {name:45s} {rate:8.0f}/s   {dict(statuses)}")
    celery = figures["usage.debit via Celery, spread over users"][0]
    print(f"  debit via Celery / no-op Celery task:        {celery / figures['no-op Celery task (same settings)'][0]:.2f}")
    print(f"  debit via Celery / plain loop:               {celery / figures['same transaction, plain loop, 1 connection'][0]:.2f}")
    print(f"  one user / spread:                           {figures['usage.debit via Celery, one user'][0] / celery:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debits", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with ExitStack() as stack:
        admin_url = postgres_admin_url(stack)
        (number,) = stack.enter_context(claim_redis_databases(redis_base_url(stack), count=1))
        database_url = create_database(admin_url, prefix="pw_bench")
        stack.callback(drop_database, admin_url, database_url)
        os.environ.update(DATABASE_URL=database_url, REDIS_URL=f"{redis_base_url(stack)}/{number}")
        settings = load_settings()
        migrate.upgrade(settings)
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        producer = create_producer(settings)
        stack.callback(producer.close)
        worker = WorkerProcess(producer, queues=USAGE_QUEUE, concurrency=args.concurrency)
        worker.start()
        stack.callback(worker.stop)
        report(measure(args, producer, make_session_factory(engine)), args)


if __name__ == "__main__":
    main()
