"""Memory of one receiver worker and one worker pool process over 10,000 events each.

    .venv/bin/python bench/bench_memory.py [--events 10000] [--lock-file /tmp/pedro-bench.lock]

How it measures: BENCHMARKS.md ("What each script does"). Target: growth < 10 MB after warm-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from pedro_credits import CreditsClient  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.service_processes import (  # noqa: E402
    Memory,
    ServiceProcess,
    exit_on_sigterm,
    free_port,
    load_average,
    memory,
    start_celery_worker,
    start_receiver,
)
from messaging.celery_config import create_producer  # noqa: E402
from models.db import make_engine, make_session_factory  # noqa: E402
from models.inbox import WebhookInbox  # noqa: E402
from ops import sample_deliveries as samples  # noqa: E402
from ops.demo_seed import seed_demo  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402
from tests.support.stamps import locked  # noqa: E402
from tests.support.usage import credits_client  # noqa: E402

BATCH = 1000
WARM_UP_EVENTS = 2000
# With --lock-file: start no further batch in one turn of the lock after this long (a batch takes
# well under a minute alone), so a turn stays under the 3 minutes other benches wait for.
LOCK_TURN_SECONDS = 100
LEVEL_MIB = 0.25  # per 1,000 events: below this over the last readings, the series has levelled off
CLERK_SECRET = "whsec_" + "YmVuY2gtbWVtb3J5LXNlY3JldC1wZWRyby13ZWJob29rcw=="
ASAAS_TOKEN = f"bench-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Reading:
    events: int
    receiver_worker: Memory
    pool_process: Memory
    celery_main: Memory
    seconds: float  # since the first reading, lock waits included (not a benchmark figure)


def signed_batch(users: list[str], kind: str) -> list[samples.Signed]:
    """Deliveries as `pedro-webhooks send` builds and signs them (Clerk `user.*`, else Asaas)."""
    options = [samples.Options(user=user) for user in users]
    if kind.startswith("user."):
        return [samples.sign_clerk(samples.clerk_delivery(kind, o), [CLERK_SECRET]) for o in options]
    return [samples.sign_asaas(samples.asaas_delivery(kind, o), [ASAAS_TOKEN]) for o in options]


def post_all(port: int, deliveries: list[samples.Signed], threads: int = 4) -> None:
    def send(chunk: list[samples.Signed]) -> list[int]:
        with httpx.Client(timeout=30) as client:
            return [
                client.post(
                    f"http://127.0.0.1:{port}/webhooks/{d.source}", content=d.body, headers=d.headers
                ).status_code
                for d in chunk
            ]

    with ThreadPoolExecutor(threads) as pool:
        statuses = [s for chunk in pool.map(send, [deliveries[i::threads] for i in range(threads)]) for s in chunk]
    if any(status != 200 for status in statuses):
        raise RuntimeError(f"the receiver refused deliveries: {sorted(set(statuses))}")


def wait_until_processed(factory, stored: int, timeout: float = 300) -> None:
    """Until `stored` inbox rows exist and none is pending."""
    deadline = time.monotonic() + timeout
    with factory() as session:
        while time.monotonic() < deadline:
            total = session.scalar(select(func.count()).select_from(WebhookInbox))
            pending = session.scalar(select(func.count()).where(WebhookInbox.status == "pending"))
            session.rollback()
            if total >= stored and not pending:
                return
            time.sleep(0.1)
    raise RuntimeError(f"inbox rows still pending after {timeout} s")


def debit_all(client: CreditsClient, users: list[str], count: int, batch: int) -> None:
    # A generous deadline: on a loaded machine the debits may wait behind other work.
    key = f"mem-{batch}-{{}}"
    sent = [
        client.send_debit(users[n % len(users)], "AI_TEXT_CHAT", key.format(n), cost=1, wait=600) for n in range(count)
    ]
    statuses = {result.answer()["status"] for result in sent}
    if statuses != {"applied"}:
        raise RuntimeError(f"debits answered {statuses}")


def run_batch(number: int, port: int, factory, client: CreditsClient, debits: int) -> int:
    """One batch of BATCH deliveries (+ debits); returns the inbox rows stored so far."""
    users = [f"user_mem_{number}_{n}" for n in range(BATCH // 2)]
    post_all(port, signed_batch(users, "user.created"))
    wait_until_processed(factory, (number + 1) * BATCH - BATCH // 2)
    post_all(port, signed_batch(users[:200], "user.updated") + signed_batch(users[200:], "PAYMENT_CONFIRMED"))
    wait_until_processed(factory, (number + 1) * BATCH)
    debit_all(client, users, debits, number)
    return (number + 1) * BATCH


def held(lock_file: Path | None) -> AbstractContextManager[None]:
    """The shared machine's bench lock (`--lock-file`), or nothing without one."""
    return locked(lock_file) if lock_file is not None else nullcontext()


def read(events: int, receiver: ServiceProcess, worker: ServiceProcess, started: float) -> Reading:
    (receiver_worker,) = receiver.children()
    pool = worker.children()[0]
    return Reading(events, memory(receiver_worker), memory(pool), memory(worker.pid), time.monotonic() - started)


def growth_per_batch(readings: list[Reading], pick) -> float:
    last = readings[-4:]
    return (pick(last[-1]) - pick(last[0])) / max(len(last) - 1, 1)


def report(readings: list[Reading], args) -> None:
    print(
        f"{args.events} deliveries through the receiver (1 gunicorn worker) and the worker"
        f" ({args.worker_concurrency} pool process{'es' if args.worker_concurrency > 1 else ''}, reading the first),"
        f" + {args.debits_per_batch} usage.debit per {BATCH}; {os.cpu_count()} CPUs, load {load_average()}"
    )
    print("  events | receiver worker RSS / USS MiB | pool process RSS / USS MiB | celery main RSS MiB | at s")
    for r in readings:
        print(
            f"  {r.events:6d} | {r.receiver_worker.rss_mib:8.1f} / {r.receiver_worker.uss_mib:6.1f}"
            f"            | {r.pool_process.rss_mib:8.1f} / {r.pool_process.uss_mib:6.1f}"
            f"         | {r.celery_main.rss_mib:8.1f}            | {r.seconds:5.0f}"
        )
    warm = next(r for r in readings if r.events >= WARM_UP_EVENTS)
    for name, pick in (
        ("receiver worker RSS", lambda r: r.receiver_worker.rss_mib),
        ("receiver worker USS", lambda r: r.receiver_worker.uss_mib),
        ("pool process RSS", lambda r: r.pool_process.rss_mib),
        ("pool process USS", lambda r: r.pool_process.uss_mib),
        ("celery main RSS", lambda r: r.celery_main.rss_mib),
    ):
        growth = pick(readings[-1]) - pick(warm)
        slope = growth_per_batch(readings, pick)
        verdict = "levels off" if slope < LEVEL_MIB else "still growing"
        target = "under" if growth * 2**20 < 10 * 10**6 else "OVER"
        print(
            f"  {name:20s} growth {warm.events}->{readings[-1].events}: {growth:+6.2f} MiB ({target} 10 MB);"
            f" last readings {slope:+.2f} MiB per {BATCH}: {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="deliveries (a multiple of 1,000)")
    parser.add_argument(
        "--debits-per-batch", type=int, default=250, help="usage.debit sent with each 1,000 deliveries, waited for"
    )
    parser.add_argument(
        "--worker-concurrency", type=int, default=1, help="pool processes (1: every task runs in the one that is read)"
    )
    parser.add_argument("--lock-file", type=Path, help="hold this flock for turns of batches (shared machines)")
    parser.add_argument(
        "--tracemalloc",
        type=Path,
        help="the worker's main process traces its allocations; what grew, by line, is written to this file",
    )
    args = parser.parse_args()
    exit_on_sigterm()
    with ExitStack() as stack:
        settings, _, _ = scratch_environment(
            stack, CLERK_WEBHOOK_SIGNING_SECRET=CLERK_SECRET, ASAAS_WEBHOOK_TOKEN=ASAAS_TOKEN, LOG_FORMAT="json"
        )
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        factory = make_session_factory(engine)
        with factory.begin() as session:
            seed_demo(session)
        producer = create_producer(settings)
        stack.callback(producer.close)
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-memory-")))
        env = dict(os.environ)
        port = free_port()
        receiver = start_receiver(env, port, web_workers=1, log=logs / "web.log")
        stack.callback(receiver.stop)
        # One pool process reads every kind of event: the Procfile's worker, told to serve the
        # debits' queue too (in production the Procfile's `usage` process serves it).
        extra = ""
        if args.tracemalloc:
            env["TRACE_MEMORY_FILE"] = str(args.tracemalloc.resolve())
            extra = "--include=bench.trace_main_memory"
        worker = start_celery_worker(
            producer,
            env,
            logs / "worker.log",
            concurrency=args.worker_concurrency,
            queues="webhooks,usage,maintenance",
            extra_args=extra,
        )
        stack.callback(worker.stop)
        client = credits_client(producer.conf.broker_url)

        started = time.monotonic()
        readings = [read(0, receiver, worker, started)]
        batches = iter(range(args.events // BATCH))
        while (number := next(batches, None)) is not None:
            with held(args.lock_file):  # batches for up to LOCK_TURN_SECONDS, then others' turn
                turn_started = time.monotonic()
                while number is not None:
                    events = run_batch(number, port, factory, client, args.debits_per_batch)
                    readings.append(read(events, receiver, worker, started))
                    if args.tracemalloc and events in (2 * BATCH, args.events):  # after the warm-up, at the end
                        os.kill(worker.process.pid, signal.SIGUSR2)
                    print(f"  ... {readings[-1]}", file=sys.stderr, flush=True)
                    if time.monotonic() - turn_started > LOCK_TURN_SECONDS:
                        break
                    number = next(batches, None)
        report(readings, args)


if __name__ == "__main__":
    main()
