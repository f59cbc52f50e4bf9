"""Throughput with 1, 2 and 4 worker processes, and with two worker instances on separate queues.

    .venv/bin/python bench/bench_scale_out.py [--events 500] [--rounds 3] [--lock-file /tmp/pedro-bench.lock]

How it measures: BENCHMARKS.md ("What each script does").
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from bench.service_processes import (  # noqa: E402
    ServiceProcess,
    exit_on_sigterm,
    load_average,
    procfile_names,
    start_celery_worker,
)
from messaging.celery_config import PROCESS_WEBHOOK_TASK, USAGE_QUEUE, WEBHOOKS_QUEUE, create_producer  # noqa: E402
from models.db import make_engine, make_session_factory  # noqa: E402
from models.inbox import WebhookInbox, record_delivery  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402
from tests.support.stamps import locked  # noqa: E402
from tests.support.usage import credits_client, make_user  # noqa: E402

EXAMPLE = json.loads((ROOT / "tests/fixtures/payloads/clerk/user.created.json").read_text())
PLENTY = 10**9
CONCURRENCIES = (1, 2, 4)


@dataclass(frozen=True)
class Figure:
    rate: float  # tasks per second
    cpu: float  # share of all cores busy during the measurement (0..1), whole machine
    worker_cpu_ms: float  # CPU the worker processes (main + pool) spent per task: load-independent


class Bench:
    """The run's database, producer and counters: fresh keys and rows for every measurement."""

    def __init__(self, factory, producer, users: list[str], events: int, lock_file: Path | None) -> None:
        self.factory, self.producer, self.users, self.events = factory, producer, users, events
        self.client = credits_client(producer.conf.broker_url)
        self.lock_file = lock_file
        self.serial = 0
        self.workers: list[ServiceProcess] = []  # the worker instances running now

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    # --- the three loads: each returns a callable that sends everything and drains it ---------

    def noop(self, queue: str = WEBHOOKS_QUEUE) -> Callable[[], None]:
        def run() -> None:
            send = self.producer.send_task
            sent = [send("celery.accumulate", args=(n,), queue=queue) for n in range(self.events)]
            for result in sent:
                result.get(timeout=300)

        return run

    def webhooks(self) -> Callable[[], None]:
        serial, ids = self.next_serial(), []
        with self.factory.begin() as session:  # stored before the clock starts
            for number in range(self.events):
                body = copy.deepcopy(EXAMPLE)
                body["data"].update(id=f"user_scale_{serial}_{number}", email_addresses=[])
                ids.append(
                    record_delivery(
                        session,
                        source="clerk",
                        external_id=f"msg_scale_{serial}_{number}",
                        event_type="user.created",
                        payload=body,
                    )
                )

        def run() -> None:
            for inbox_id in ids:
                self.producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": inbox_id}, ignore_result=True)
            with self.factory() as session:
                while session.scalar(select(func.count()).where(WebhookInbox.status == "pending")):
                    session.rollback()
                    time.sleep(0.05)

        return run

    def debits(self) -> Callable[[], None]:
        serial = self.next_serial()

        def run() -> None:
            sent = [
                self.client.send_debit(
                    self.users[n % len(self.users)], "AI_TEXT_CHAT", f"scale-{serial}-{n}", cost=1, wait=300
                )
                for n in range(self.events)
            ]
            statuses = {result.answer()["status"] for result in sent}
            if statuses != {"applied"}:
                raise RuntimeError(f"debits answered {statuses}")

        return run

    # --- measuring -------------------------------------------------------------------------

    def measure(self, *loads: Callable[[], None]) -> list[Figure]:
        """Run `loads` at the same time (one thread each); the rate of each, and the CPU use."""
        busy_before, worker_before = cpu_times(), self.worker_cpu_seconds()

        def timed(run: Callable[[], None]) -> float:
            started = time.perf_counter()
            run()
            return self.events / (time.perf_counter() - started)

        with ThreadPoolExecutor(len(loads)) as pool:
            rates = list(pool.map(timed, loads))
        busy = cpu_share(busy_before, cpu_times())
        worker_ms = (self.worker_cpu_seconds() - worker_before) * 1000 / (self.events * len(loads))
        return [Figure(rate, busy, worker_ms) for rate in rates]

    def worker_cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(pid) for worker in self.workers for pid in [worker.pid, *worker.children()])


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/<pid>/stat (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def cpu_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def held(lock_file: Path | None) -> AbstractContextManager[None]:
    """The shared machine's bench lock (`--lock-file`), or nothing without one."""
    return locked(lock_file) if lock_file is not None else nullcontext()


def median(figures: list[Figure]) -> Figure:
    return Figure(*(statistics.median(getattr(f, name) for f in figures) for name in ("rate", "cpu", "worker_cpu_ms")))


@contextmanager
def workers(bench: Bench, env: dict[str, str], logs: Path, *specs: tuple[str, int, str | None]) -> Iterator[None]:
    """Worker instances (Procfile process, concurrency, --queues or None) for the block, which
    holds the bench lock (if any) from the workers' start to their stop."""
    with held(bench.lock_file), ExitStack() as running:
        for name, concurrency, queues in specs:
            log = logs / f"{name}-{concurrency}-{queues or 'procfile'}.log"
            worker = start_celery_worker(bench.producer, env, log, concurrency, queues=queues, name=name)
            running.callback(worker.stop)
            bench.workers.append(worker)
        running.callback(bench.workers.clear)
        for name, _, queues in specs:  # warm-up: every pool process connects and imports
            serves_usage = name == "usage" or queues == USAGE_QUEUE
            bench.measure(bench.noop(USAGE_QUEUE if serves_usage else WEBHOOKS_QUEUE))
        yield


def scale_by_concurrency(bench: Bench, env: dict[str, str], logs: Path, rounds: int) -> dict[tuple[str, int], Figure]:
    """Each load at each concurrency, on the Procfile process that serves it: `worker`, and for
    the debits the Procfile's `usage` process when it has one (batched debits)."""
    makers = {"no-op": bench.noop, "webhooks": bench.webhooks, "debits": bench.debits}
    set_ups = [("worker", ["no-op", "webhooks", "debits"])]
    if "usage" in procfile_names():
        set_ups = [("worker", ["no-op", "webhooks"]), ("usage", ["debits"])]
    figures: dict[tuple[str, int], Figure] = {}
    for concurrency in CONCURRENCIES:
        for process, loads in set_ups:
            with workers(bench, env, logs, (process, concurrency, None)):
                for load in loads:
                    figures[(load, concurrency)] = median([bench.measure(makers[load]())[0] for _ in range(rounds)])
                    print(f"  ... {load} N={concurrency}: {figures[(load, concurrency)]}", file=sys.stderr, flush=True)
    return figures


def separate_queues(bench: Bench, env: dict[str, str], logs: Path, rounds: int, concurrency: int) -> dict[str, Figure]:
    # The Procfile's own debit process when it has one (batched debits), else the worker on `usage`.
    has_usage_process = "usage" in procfile_names()
    usage_process = ("usage", concurrency, None) if has_usage_process else ("worker", concurrency, USAGE_QUEUE)
    with workers(bench, env, logs, ("worker", concurrency, WEBHOOKS_QUEUE), usage_process):
        alone_webhooks = median([bench.measure(bench.webhooks())[0] for _ in range(rounds)])
        alone_debits = median([bench.measure(bench.debits())[0] for _ in range(rounds)])
        together = [bench.measure(bench.webhooks(), bench.debits()) for _ in range(rounds)]
    return {
        "webhooks alone": alone_webhooks,
        "debits alone": alone_debits,
        "webhooks, both loaded": median([pair[0] for pair in together]),
        "debits, both loaded": median([pair[1] for pair in together]),
    }


def report(by_concurrency: dict[tuple[str, int], Figure], split: dict[str, Figure], args) -> None:
    print(
        f"{args.events} tasks per figure, median of {args.rounds} rounds, fire and drain; {os.cpu_count()} CPUs,"
        f" load {load_average()}; CPU = share of all cores busy during the measurement (whole machine);"
        " ms/task = CPU the worker processes spent per task (main + pool; PostgreSQL and Redis not included)"
    )
    print("1. one worker instance (Procfile `worker`), --concurrency N (one prefork pool)")
    for load in ("no-op", "webhooks", "debits"):
        one = by_concurrency[(load, 1)].rate
        cells = [
            f"N={n}: {by_concurrency[(load, n)].rate:6.0f}/s x{by_concurrency[(load, n)].rate / one:4.2f}"
            f" CPU {by_concurrency[(load, n)].cpu:4.0%} {by_concurrency[(load, n)].worker_cpu_ms:4.1f} ms/task"
            for n in CONCURRENCIES
        ]
        print(f"  {load:9s} " + "   ".join(cells))
    for n in CONCURRENCIES:
        noop = by_concurrency[("no-op", n)].rate
        print(
            f"  N={n}: webhooks / no-op {by_concurrency[('webhooks', n)].rate / noop:4.2f},"
            f" debits / no-op {by_concurrency[('debits', n)].rate / noop:4.2f}"
        )
    print(f"2. two worker instances, --queues=webhooks and --queues=usage, --concurrency {args.split_concurrency} each")
    for name in ("webhooks", "debits"):
        alone, both = split[f"{name} alone"], split[f"{name}, both loaded"]
        print(
            f"  {name:9s} alone {alone.rate:6.0f}/s (CPU {alone.cpu:4.0%}, {alone.worker_cpu_ms:4.1f} ms/task)"
            f"   both loaded {both.rate:6.0f}/s (CPU {both.cpu:4.0%})   both / alone {both.rate / alone.rate:4.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500, help="tasks per figure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=1000, help="users the debits are spread over")
    parser.add_argument(
        "--split-concurrency", type=int, default=1, help="pool processes of each of the two worker instances"
    )
    parser.add_argument("--lock-file", type=Path, help="hold this flock for each worker set-up (shared machines)")
    args = parser.parse_args()
    exit_on_sigterm()
    with ExitStack() as stack:
        settings, _, _ = scratch_environment(stack, SIGNUP_CREDITS="100", LOG_FORMAT="json")
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        factory = make_session_factory(engine)
        users = [f"user_scale_debit_{n}" for n in range(args.users)]
        for clerk_id in users:
            make_user(factory, clerk_id, credits=PLENTY)
        producer = create_producer(settings)
        stack.callback(producer.close)
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-out-")))
        bench = Bench(factory, producer, users, args.events, args.lock_file)
        env = dict(os.environ)
        by_concurrency = scale_by_concurrency(bench, env, logs, args.rounds)
        split = separate_queues(bench, env, logs, args.rounds, args.split_concurrency)
        report(by_concurrency, split, args)


if __name__ == "__main__":
    main()
