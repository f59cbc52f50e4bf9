"""Debit and hold round trips (send one, await its final answer) from the TypeScript client beside
the Python client's, at 1 and 8 in flight, against one worker, in one run; p50/p99, medians.

    python bench/bench_ts_client.py [--rounds 3] [--round-trips 200] [--users 100] [--concurrency 2]

Builds clients/typescript first (npm ci when needed, tsc). How it measures: BENCHMARKS.md ("What
each script does"). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from messaging.celery_config import USAGE_QUEUE, create_producer  # noqa: E402
from models.db import make_engine, make_session_factory  # noqa: E402
from tests.support.celery_worker import WorkerProcess  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402
from tests.support.typescript_client import PACKAGE, SERVICE, node_environment, prepare  # noqa: E402
from tests.support.usage import credits_client, make_user  # noqa: E402

PLENTY = 10**9
IN_FLIGHT = (1, 8)


KINDS = {"debit": "applied", "hold": "held"}


def python_round_trips(
    broker_url: str, users: list[str], in_flight: int, total: int, prefix: str, kind: str = "debit"
) -> list[float]:
    """One client (a service keeps one), `in_flight` threads each sending a debit (or a hold of 1)
    and awaiting its final answer; the latencies in ms."""
    client = credits_client(broker_url)
    call = (
        (lambda user, key: client.hold(user, "AI_TEXT_CHAT", key, credits=1, expires_in=600))
        if kind == "hold"
        else (lambda user, key: client.debit(user, "AI_TEXT_CHAT", key, cost=1))
    )
    client.debit(users[0], "AI_TEXT_CHAT", f"{prefix}-warm", cost=1)  # connected before the clock runs
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    per_thread = total // in_flight

    def loop(number: int) -> None:
        mine = []
        for n in range(per_thread):
            user = users[(number * per_thread + n) % len(users)]
            started = time.perf_counter()
            answer = call(user, f"{prefix}-{number}-{n}")
            mine.append((time.perf_counter() - started) * 1000)
            with lock:
                statuses[answer["status"]] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert statuses == {KINDS[kind]: per_thread * in_flight}, statuses
    return latencies


def ts_round_trips(
    node: str, env: dict[str, str], users: list[str], in_flight: int, total: int, prefix: str, kind: str = "debit"
):
    """The same from the TypeScript client (test/tools/bench.ts): one client, `in_flight` loops."""
    script = PACKAGE / "build" / "test" / "tools" / "bench.js"
    done = subprocess.run(
        [node, str(script), str(in_flight), str(total)],
        env={**env, "BENCH_USERS": ",".join(users), "BENCH_PREFIX": prefix, "BENCH_KIND": kind},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["statuses"] == {KINDS[kind]: (total // in_flight) * in_flight}, result["statuses"]
    return result["latencies_ms"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=200, help="debits per figure")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes of the worker")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed"
    print(f"clients/typescript prepared: {prepare(npm, node)}", flush=True)
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
        broker_url = settings.redis_url.get_secret_value()
        env = node_environment(broker_url, broker_url)
        python_round_trips(broker_url, users, 2, 100, "warmup-py")  # fork, connect, fill the caches
        ts_round_trips(node, env, users, 2, 100, "warmup-ts")
        rounds: list[dict[str, float]] = []
        for number in range(args.rounds):
            figures = {}
            for kind in KINDS:
                for in_flight in IN_FLIGHT:
                    for name, measure in (
                        ("Python", lambda k, p, c: python_round_trips(broker_url, users, k, args.round_trips, p, c)),
                        ("TypeScript", lambda k, p, c: ts_round_trips(node, env, users, k, args.round_trips, p, c)),
                    ):
                        latencies = measure(in_flight, f"r{number}-{name}-{kind}-{in_flight}", kind)
                        figures[f"{name} {kind}, {in_flight} in flight, p50 ms"] = percentile(latencies, 0.50)
                        figures[f"{name} {kind}, {in_flight} in flight, p99 ms"] = percentile(latencies, 0.99)
            rounds.append(figures)
            print(f"round {number + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    print(
        f"debit and hold round trips ({SERVICE} service), {args.round_trips} per figure, {args.users} users, 1 worker x"
        f" {args.concurrency} processes, {os.cpu_count()} CPUs, median of {len(rounds)} rounds"
        f" (load average at the end: {os.getloadavg()[0]:.2f})"
    )
    for name in rounds[0]:
        each = " ".join(f"{r[name]:.2f}" for r in rounds)
        print(f"  {name:34s} {statistics.median(r[name] for r in rounds):8.2f}   rounds: {each}")


if __name__ == "__main__":
    main()
