"""Receiver throughput and latency under wrk, against the lean receiver and a bare Flask route
measured in the same run; then one receiver worker's memory over 10,000 deliveries.

    flock /tmp/pedro-bench.lock .venv/bin/python bench/bench_receiver.py [all|throughput|memory] [--rounds 3]

How it measures: BENCHMARKS.md ("What each script does").
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from svix.webhooks import Webhook  # noqa: E402

from bench.service_processes import CpuMeter  # noqa: E402
from ops.local.servers import free_port  # noqa: E402
from tests.support.databases import libpq_url, scratch_environment  # noqa: E402

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWZvci1wZWRyby13ZWJob29rcw=="
BODY_FILE = ROOT / "tests/fixtures/payloads/clerk/user.created.json"
LUA_SCRIPT = ROOT / "bench/signed_deliveries.lua"
WRK = "/usr/bin/wrk"
WORKERS = 4
CONNECTIONS = 16
WRK_THREADS = 2
# Deliveries signed per second of a run: above any rate a 2-core machine reaches (the bare
# route does ~5,000/s), so no run ever runs out (it would fail loudly: see the Lua script).
DELIVERIES_PER_SECOND = 8000


@dataclass(frozen=True)
class App:
    name: str
    wsgi: str
    chdir: Path
    queue_key: str | None  # the Redis list its accepted deliveries go to; None: stores nothing


BARE = App("bare Flask route", "bare_flask_app:app", ROOT / "bench", None)
LEAN = App("lean receiver", "lean_receiver:app", ROOT / "bench", "lean-receiver")
RECEIVER = App("receiver", "receiver.app:create_app()", ROOT, "webhooks")


@dataclass(frozen=True)
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    ok: int  # 200 answers
    wrk_cpu: float  # wrk's CPU seconds per wall second (2 threads: at most 2.0)


# -- one wrk run --------------------------------------------------------------------------------


def write_deliveries(folder: Path, count: int) -> Path:
    """`count` never-duplicate deliveries, signed now over BODY_FILE (one line each)."""
    signer, now, body = Webhook(SECRET), datetime.now(tz=UTC), BODY_FILE.read_text()
    path = folder / f"deliveries-{uuid.uuid4().hex}.txt"
    with path.open("w") as out:
        for _ in range(count):
            msg_id = f"msg_{uuid.uuid4().hex}"
            out.write(f"{msg_id} {int(now.timestamp())} {signer.sign(msg_id, now, body)}\n")
    return path


def wrk(port: int, folder: Path, seconds: float, delay_ms: float = 0.0) -> Run:
    deliveries = write_deliveries(folder, int(DELIVERIES_PER_SECOND * seconds))
    command = [
        WRK,
        f"-t{WRK_THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        f"http://127.0.0.1:{port}",
        "--",
        str(deliveries),
        str(BODY_FILE),
        f"{delay_ms:.3f}",
        str(WRK_THREADS),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    deliveries.unlink()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return _parse(output, cpu / wall)


def _parse(output: str, wrk_cpu: float) -> Run:
    result = re.search(r"^RESULT (.*) exhausted=(\d+) p50_us=(\d+) p99_us=(\d+)$", output, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if result is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    if int(result[2]):
        raise RuntimeError("wrk ran out of signed deliveries: raise DELIVERIES_PER_SECOND")
    statuses = dict(part.split("=") for part in result[1].split())
    others = {status: count for status, count in statuses.items() if status != "200"}
    if others:
        raise RuntimeError(f"answers other than 200: {others}")
    return Run(float(rate[1]), int(result[3]) / 1000, int(result[4]) / 1000, int(statuses.get("200", 0)), wrk_cpu)


def half_rate_delay(port: int, folder: Path, peak: float, seconds: float) -> tuple[float, Run]:
    """The per-connection delay (ms) that brings the closed loop to about half of `peak`, and
    the calibration run it was derived from."""
    target = peak / 2
    # Each connection sends one request per (latency + delay): rate = connections / (latency + delay).
    delay_ms = max(CONNECTIONS / target * 1000 - CONNECTIONS / peak * 1000, 0.0)
    probe = wrk(port, folder, seconds, delay_ms)
    latency_ms = CONNECTIONS / probe.rate * 1000 - delay_ms
    return max(CONNECTIONS / target * 1000 - latency_ms, 0.0), probe


# -- servers ------------------------------------------------------------------------------------


@contextmanager
def gunicorn(app: App, env: dict[str, str], workers: int = WORKERS) -> Iterator[tuple[int, psutil.Process]]:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        "--config",
        "python:receiver.gunicorn_conf",
        "--chdir",
        str(app.chdir),
        "--access-logfile",
        "/dev/null",
        app.wsgi,
    ]
    environ = {
        **env,
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "RECEIVER_METRICS_PORT": str(free_port()),
        "PYTHONPATH": str(ROOT),
    }
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each server makes a fresh folder of its own
    process = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_up(port, process)
        yield port, psutil.Process(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _wait_until_up(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not come up")


# -- what was stored ----------------------------------------------------------------------------


class Store:
    def __init__(self, database_url: str, redis_url: str) -> None:
        self._database_url = libpq_url(database_url)
        self._redis = redis.Redis.from_url(redis_url)

    def reset(self) -> None:
        with psycopg.connect(self._database_url) as connection:
            connection.execute("TRUNCATE ingest.webhook_inbox")
        self._redis.flushdb()

    def check(self, app: App, ok: int) -> str:
        """Every 200 has its row and its queued message (a request wrk stopped waiting for at
        the end of a run may be stored without its 200 being counted: at most one per connection and
        run; an app gets up to four runs: warm-up, peak, calibration, half peak)."""
        with psycopg.connect(self._database_url) as connection:
            rows = connection.execute("SELECT count(*) FROM ingest.webhook_inbox").fetchone()[0]  # type: ignore[index]
        if app.queue_key is None:
            return f"{ok} answered 200, {rows} rows (stores nothing)"
        queued = self._redis.llen(app.queue_key)
        if not ok <= rows <= ok + CONNECTIONS * 4 or queued != rows:
            raise RuntimeError(f"{app.name}: {ok} answered 200 but {rows} rows and {queued} messages")
        return f"{ok} answered 200, {rows} rows, {queued} messages"


# -- the throughput part ------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    peak: Run
    half: Run | None
    check: str  # what the store holds after the runs
    peak_cpu: str  # CPU time per request during the peak run, by group of processes


def measure(app: App, env: dict[str, str], store: Store, folder: Path, seconds: float) -> Measured:
    store.reset()
    with gunicorn(app, env) as (port, master):
        warm = wrk(port, folder, 1)
        cpu = CpuMeter(lambda: {process: "gunicorn" for process in [master, *master.children()]}, ("gunicorn",))
        with cpu.measuring():
            peak = wrk(port, folder, seconds)
        half = None
        ok = warm.ok + peak.ok
        if app.queue_key is not None:
            delay_ms, probe = half_rate_delay(port, folder, peak.rate, 2)
            half = wrk(port, folder, seconds, delay_ms)
            ok += probe.ok + half.ok
    return Measured(peak, half, store.check(app, ok), cpu.line(peak.ok))


def throughput(env: dict[str, str], store: Store, rounds: int, seconds: float) -> None:
    results: dict[str, list[tuple[Run, Run | None]]] = {}
    with tempfile.TemporaryDirectory(prefix="pedro-bench-") as folder:
        for number in range(1, rounds + 1):
            for app in (BARE, LEAN, RECEIVER):
                measured = measure(app, env, store, Path(folder), seconds)
                peak, half = measured.peak, measured.half
                results.setdefault(app.name, []).append((peak, half))
                half_text = f"half {half.rate:6.0f} req/s p99 {half.p99_ms:5.1f} ms" if half else ""
                print(
                    f"round {number}  {app.name:17s} peak {peak.rate:6.0f} req/s p50 {peak.p50_ms:5.1f} ms"
                    f" p99 {peak.p99_ms:5.1f} ms wrk CPU {peak.wrk_cpu:4.2f}  {half_text}  [{measured.check}]\n"
                    f"         {'':17s} CPU ms per request at peak: {measured.peak_cpu}",
                    flush=True,
                )
    print(f"\nmedian of {rounds} rounds ({seconds:g} s per run, {CONNECTIONS} connections, {WRK_THREADS} wrk threads)")
    for name, runs in results.items():
        peaks = [peak for peak, _ in runs]
        line = (
            f"  {name:17s} peak {_median(peaks, 'rate'):6.0f} req/s  p50 {_median(peaks, 'p50_ms'):5.1f} ms"
            f"  p99 {_median(peaks, 'p99_ms'):5.1f} ms  wrk CPU {_median(peaks, 'wrk_cpu'):4.2f}"
        )
        halves = [half for _, half in runs if half is not None]
        if halves:
            line += (
                f"  | half peak: {_median(halves, 'rate'):6.0f} req/s  p50 {_median(halves, 'p50_ms'):5.1f} ms"
                f"  p99 {_median(halves, 'p99_ms'):5.1f} ms"
            )
        print(line)
    ratios = [r[0].rate / lean[0].rate for r, lean in zip(results[RECEIVER.name], results[LEAN.name], strict=True)]
    bare = [r[0].rate / b[0].rate for r, b in zip(results[LEAN.name], results[BARE.name], strict=True)]
    print(f"  receiver / lean (per round {', '.join(f'{r:.2f}' for r in ratios)}): {statistics.median(ratios):.2f}")
    print(f"  lean / bare route: {statistics.median(bare):.2f}")
    # The same wrk settings drove the bare route: if that rate is well above the others', wrk
    # (its CPU is printed per app, out of 2.0 for 2 threads) was not what limited them.
    bare_peak = statistics.median(peak.rate for peak, _ in results[BARE.name])
    receiver_peak = statistics.median(peak.rate for peak, _ in results[RECEIVER.name])
    print(f"  wrk: the same settings drove the bare route at {bare_peak / receiver_peak:.1f}x the receiver's rate")


def _median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


# -- the memory part ----------------------------------------------------------------------------


def memory(env: dict[str, str], store: Store, deliveries: int, every: int) -> None:
    """One receiver worker's RSS, sampled every `every` deliveries."""
    store.reset()
    body = BODY_FILE.read_bytes()
    signer = Webhook(SECRET)
    with gunicorn(RECEIVER, env, workers=1) as (port, master), httpx.Client(timeout=30) as client:
        (worker,) = master.children()
        url = f"http://127.0.0.1:{port}/webhooks/clerk"

        def send(_: int) -> int:
            msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(tz=UTC)
            headers = {
                "svix-id": msg_id,
                "svix-timestamp": str(int(now.timestamp())),
                "svix-signature": signer.sign(msg_id, now, body.decode()),
                "content-type": "application/json",
            }
            return client.post(url, content=body, headers=headers).status_code

        samples = [worker.memory_info().rss / 2**20]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(deliveries // every):
                statuses = set(pool.map(send, range(every)))
                if statuses != {200}:
                    raise RuntimeError(f"answers other than 200: {statuses}")
                samples.append(worker.memory_info().rss / 2**20)
    print(f"\none receiver worker (WEB_CONCURRENCY 1), RSS in MiB every {every} deliveries:")
    print("  " + " ".join(f"{sample:.1f}" for sample in samples))
    warm = samples[1]
    print(
        f"  start {samples[0]:.1f}, after {every} (warm) {warm:.1f}, after {deliveries} {samples[-1]:.1f}:"
        f" growth after warm-up {samples[-1] - warm:+.1f} MiB;"
        f" over the last half {samples[-1] - samples[len(samples) // 2]:+.1f} MiB"
    )
    print(f"  [{store.check(RECEIVER, deliveries)}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "part",
        nargs="?",
        choices=("all", "throughput", "memory"),
        default="all",
        help="both parts, the wrk runs only, or one worker's memory only",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5, help="length of each peak and half-peak run")
    parser.add_argument("--deliveries", type=int, default=10_000, help="for the memory part")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}", flush=True)
    with ExitStack() as stack:
        _, _, database_url = scratch_environment(
            stack, CLERK_WEBHOOK_SIGNING_SECRET=SECRET, ASAAS_WEBHOOK_TOKEN=uuid.uuid4().hex
        )
        env = dict(os.environ)
        store = Store(database_url, env["REDIS_URL"])
        if args.part in ("all", "throughput"):
            throughput(env, store, args.rounds, args.seconds)
        if args.part in ("all", "memory"):
            memory(env, store, args.deliveries, 1000)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
