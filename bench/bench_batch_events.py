"""What showing each debit batch in Flower costs: debit throughput (fire and drain) of a worker
whose batches send their three events, against one whose batches send none, rounds alternating.

    python bench/bench_batch_events.py [--rounds 5] [--debits 2000] [--users 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_usage_debit import PLENTY, drained, send_debits  # noqa: E402
from messaging.celery_config import USAGE_QUEUE, create_producer  # noqa: E402
from models.db import make_engine, make_session_factory  # noqa: E402
from tests.support.celery_worker import WorkerProcess  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402
from tests.support.usage import credits_client, make_user  # noqa: E402

KINDS = {"with batch events": (), "without": ("--include=bench.no_batch_events",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--debits", type=int, default=2000)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    with ExitStack() as stack:
        settings, _, _ = scratch_environment(stack)
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        producer = create_producer(settings)
        stack.callback(producer.close)
        factory = make_session_factory(engine)
        users = [f"user_bench_{n}" for n in range(args.users)]
        for clerk_id in users:
            make_user(factory, clerk_id, credits=PLENTY)
        client = credits_client(producer.conf.broker_url)
        stack.callback(client.close)
        rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for number in range(args.rounds):
            for kind, extra in KINDS.items():
                worker = WorkerProcess(producer, queues=USAGE_QUEUE, concurrency=2, extra_args=extra)
                worker.start()
                try:
                    prefix = f"{kind}-{number}"
                    drained(producer, worker, lambda p=prefix: send_debits(client, users, 200, f"warm-{p}"))
                    rate, statuses = drained(
                        producer, worker, lambda p=prefix: send_debits(client, users, args.debits, p)
                    )
                    assert statuses == {"applied": args.debits}, statuses
                    rates[kind].append(rate)
                finally:
                    worker.stop()
                print(f"round {number + 1}, {kind}: {rate:.1f} debits/s", flush=True)
        median = {kind: statistics.median(values) for kind, values in rates.items()}
        for kind, value in median.items():
            print(f"  {kind:20s} {value:8.1f} debits/s   rounds: {' '.join(f'{v:.1f}' for v in rates[kind])}")
        cost = 1 - median["with batch events"] / median["without"]
        print(f"  cost of the batch events: {cost:.1%} of the debit throughput (goal < 5%)")


if __name__ == "__main__":
    main()
