"""Webhook processing throughput through real Celery workers, against a same-run baseline.

Creates its own database and claims its own Redis database numbers, starts one `celery worker`
(prefork, 2 processes), then measures:
  baseline  N no-op tasks (celery.accumulate) through the same broker, settings and worker;
  process   N Clerk user.created inbox rows through `webhooks.process` (user + balance + ledger).
Prints rates, the ratio process/baseline, and the worker's resident memory before and after.

    .venv/bin/python bench/bench_webhooks.py [--events 2000]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from models.db import make_engine, make_session_factory  # noqa: E402
from models.inbox import WebhookInbox, record_delivery  # noqa: E402
from tests.support.celery_worker import WorkerProcess  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402
from worker.celery_config import create_producer  # noqa: E402

EXAMPLE = json.loads((ROOT / "tests/fixtures/payloads/clerk/user.created.json").read_text())


def worker_rss_mib(worker: WorkerProcess) -> float:
    main = psutil.Process(worker.process.pid)
    return sum(p.memory_info().rss for p in [main, *main.children()]) / 2**20


def run_baseline(producer, count: int) -> float:
    started = time.perf_counter()
    results = [producer.send_task("celery.accumulate", args=(i,), queue="webhooks") for i in range(count)]
    for result in results:
        result.get(timeout=300)
    return count / (time.perf_counter() - started)


def store_events(factory, count: int) -> list[int]:
    ids = []
    with factory.begin() as session:
        for number in range(count):
            body = copy.deepcopy(EXAMPLE)
            body["data"].update(id=f"user_bench_{number}", email_addresses=[])
            ids.append(
                record_delivery(
                    session, source="clerk", external_id=f"msg_bench_{number}", event_type="user.created", payload=body
                )
            )
    return ids


def run_processing(producer, factory, ids: list[int]) -> float:
    started = time.perf_counter()
    for inbox_id in ids:
        producer.send_task("webhooks.process", kwargs={"inbox_id": inbox_id}, ignore_result=True)
    with factory() as session:
        while session.scalar(select(func.count()).where(WebhookInbox.status == "pending")):
            time.sleep(0.05)
            session.rollback()
    return len(ids) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with ExitStack() as stack:
        settings, _, _ = scratch_environment(stack, SIGNUP_CREDITS="100")
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        factory = make_session_factory(engine)
        producer = create_producer(settings)
        worker = WorkerProcess(producer, queues="webhooks", concurrency=2)
        worker.start()
        stack.callback(worker.stop)

        run_baseline(producer, 200)  # warm-up: connections, imports, pool children
        rss_before = worker_rss_mib(worker)
        baseline = run_baseline(producer, args.events)
        ids = store_events(factory, args.events)
        processing = run_processing(producer, factory, ids)
        rss_after = worker_rss_mib(worker)
        with factory() as session:
            done = session.scalar(select(func.count()).where(WebhookInbox.status == "processed"))
        print(f"events                       {args.events} (processed: {done})")
        print(f"baseline no-op tasks/s       {baseline:8.0f}")
        print(f"webhooks.process events/s    {processing:8.0f}")
        print(f"ratio process / no-op        {processing / baseline:8.2f}")
        print(f"worker RSS MiB before/after  {rss_before:6.1f} / {rss_after:6.1f}")


if __name__ == "__main__":
    main()
