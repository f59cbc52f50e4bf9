"""Receiver throughput under gunicorn, against a bare Flask route in the same run.

Starts gunicorn twice with the same settings (sync workers, WEB_CONCURRENCY 4): once serving a
Flask route that does nothing (bench/bare_flask_app.py), once serving the receiver against its
own database and a Redis database of its own (nothing consumes the queue). Sends the same
number of signed Clerk deliveries to each from a pool of client threads, and prints requests/s,
the ratio receiver/bare, latency percentiles, and the receiver workers' memory.

    .venv/bin/python bench/bench_receiver.py [--requests 3000] [--threads 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from svix.webhooks import Webhook  # noqa: E402

from tests.support.databases import scratch_environment  # noqa: E402
from worker.dev.embedded_servers import free_port  # noqa: E402

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWZvci1wZWRyby13ZWJob29rcw=="
BODY = (ROOT / "tests/fixtures/payloads/clerk/user.created.json").read_text()
WORKERS = "4"


def signed_requests(count: int) -> list[dict[str, str]]:
    signer, now = Webhook(SECRET), datetime.now(tz=UTC)
    requests = []
    for _ in range(count):
        msg_id = f"msg_{uuid.uuid4().hex}"
        requests.append(
            {
                "svix-id": msg_id,
                "svix-timestamp": str(int(now.timestamp())),
                "svix-signature": signer.sign(msg_id, now, BODY),
                "content-type": "application/json",
            }
        )
    return requests


def start_gunicorn(app: str, env: dict[str, str], port: int, chdir: Path) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        "--config",
        "python:receiver.gunicorn_conf",
        "--chdir",
        str(chdir),
        "--access-logfile",
        "/dev/null",
        app,
    ]
    process = subprocess.Popen(
        command,
        env={**env, "PORT": str(port), "WEB_CONCURRENCY": WORKERS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/webhooks/clerk", content=b"{}", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn serving {app} did not come up")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def load(port: int, requests: list[dict[str, str]], threads: int) -> tuple[float, list[float], dict[int, int]]:
    url = f"http://127.0.0.1:{port}/webhooks/clerk"
    body = BODY.encode()

    def send(chunk: list[dict[str, str]]) -> list[tuple[int, float]]:
        results = []
        with httpx.Client(timeout=30) as client:
            for headers in chunk:
                started = time.perf_counter()
                status = client.post(url, content=body, headers=headers).status_code
                results.append((status, time.perf_counter() - started))
        return results

    chunks = [requests[i::threads] for i in range(threads)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = [r for chunk in pool.map(send, chunks) for r in chunk]
    elapsed = time.perf_counter() - started
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return len(requests) / elapsed, [latency for _, latency in results], statuses


def rss_mib(process: subprocess.Popen) -> float:
    main = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [main, *main.children()]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with ExitStack() as stack:
        scratch_environment(stack, CLERK_WEBHOOK_SIGNING_SECRET=SECRET, ASAAS_WEBHOOK_TOKEN=uuid.uuid4().hex)
        env = dict(os.environ)

        figures = {}
        for name, app, chdir in (
            ("bare Flask route", "bare_flask_app:app", ROOT / "bench"),
            ("receiver", "receiver.app:create_app()", ROOT),
        ):
            port = free_port()
            server = start_gunicorn(app, env, port, chdir)
            try:
                load(port, signed_requests(200), args.threads)  # warm-up
                rate, latencies, statuses = load(port, signed_requests(args.requests), args.threads)
                figures[name] = (rate, latencies, statuses, rss_mib(server))
            finally:
                stop(server)

    print(
        f"{args.requests} requests per figure, {args.threads} client threads, gunicorn {WORKERS} sync workers,"
        f" {os.cpu_count()} CPUs"
    )
    for name, (rate, latencies, statuses, rss) in figures.items():
        p50, p99 = statistics.quantiles(latencies, n=100)[49] * 1000, statistics.quantiles(latencies, n=100)[98] * 1000
        print(
            f"  {name:18s} {rate:7.0f} req/s   p50 {p50:5.1f} ms   p99 {p99:6.1f} ms   RSS {rss:6.1f} MiB   {statuses}"
        )
    print(f"  receiver / bare:   {figures['receiver'][0] / figures['bare Flask route'][0]:.2f}")


if __name__ == "__main__":
    main()
