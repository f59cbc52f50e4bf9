"""Webhook pipeline throughput through a real Celery worker, against same-run baselines: a no-op
task, `webhooks.process` (fire and drain), the same statements in a plain psycopg loop (the
database's ceiling) and end to end through the receiver (wrk).

    flock /tmp/pedro-bench.lock .venv/bin/python bench/bench_webhooks.py [--events 1000] [--rounds 3]

How it measures: BENCHMARKS.md ("What each script does").
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402
from sqlalchemy import Engine, func, select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402
from svix.webhooks import Webhook  # noqa: E402

from bench.service_processes import CpuMeter  # noqa: E402
from bench.webhook_sql_loop import run_loop  # noqa: E402
from messaging.celery_config import PROCESS_WEBHOOK_TASK, WEBHOOKS_QUEUE, create_producer  # noqa: E402
from models.app import User  # noqa: E402
from models.db import make_engine, make_session_factory  # noqa: E402
from models.inbox import WebhookInbox, record_delivery  # noqa: E402
from tests.support.celery_worker import WorkerProcess  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402

EXAMPLE = json.loads((ROOT / "tests/fixtures/payloads/clerk/user.created.json").read_text())
CLERK_SECRET = "whsec_" + "YmVuY2gtd2ViaG9va3Mtc2lnbmluZy1zZWNyZXQ="
WRK = "/usr/bin/wrk"
# One wrk thread: it stops once every delivery it sent was answered. With two, the first to
# finish stopped while the other still had deliveries on the way, and its open connections held
# the receiver's sync workers: gunicorn 27 (`util.close_graceful`, benoitc/gunicorn#3590) lingers
# up to 2 s after each answer for the client to close, and a stopped wrk thread never does. The
# other thread's last deliveries then waited 2 or 4 s for a worker (measured: every answer under
# 300 ms in the access log, the last rows stored 2.0 and 4.0 s late), the bench re-sent them
# and the round's rate halved. One thread keeps up: the receiver peaks near 1,200 deliveries/s,
# where wrk's two threads used 0.2 CPU.
WRK_THREADS, WRK_CONNECTIONS = 1, 16
DRAIN_POLL_SECONDS = 0.01
TIMEOUT_SECONDS = 600
RESEND_AFTER_SECONDS = 1  # no delivery stored for this long: send again those never stored
STALL_SECONDS = 60  # no progress for this long: the run failed (a delivery lost, a worker stuck)


@dataclass
class Round:
    noop: float
    process: float
    sql_loop: float
    e2e: float
    client: str  # wrk's status counts

    def line(self, number: int) -> str:
        return (
            f"round {number}: no-op {self.noop:6.0f}/s  process {self.process:6.0f}/s ({self.process / self.noop:4.2f})"
            f"  sql loop {self.sql_loop:6.0f}/s ({self.sql_loop / self.noop:4.2f})"
            f"  e2e {self.e2e:6.0f}/s ({self.e2e / self.noop:4.2f})  [wrk: {self.client}]"
        )


def worker_processes(worker: WorkerProcess) -> Callable[[], dict[psutil.Process, str]]:
    """The worker's main process and its pool processes, for `CpuMeter`."""

    def own() -> dict[psutil.Process, str]:
        main = psutil.Process(worker.process.pid)
        return {main: "main", **{child: "pool" for child in main.children()}}

    return own


class Drain:
    """Fire and drain on one worker: fill the queue while the worker does not consume, then time
    until the queue is empty and nothing is unacked."""

    def __init__(self, producer: Celery, worker: WorkerProcess, redis_url: str, cpu: CpuMeter | None = None) -> None:
        self.producer, self.worker, self.cpu = producer, worker, cpu
        self.redis = redis.Redis.from_url(redis_url)

    def timed(self, count: int, fill: Callable[[], None], profile: Path | None = None) -> float:
        self._control("cancel_consumer")
        fill()
        assert self.redis.llen(WEBHOOKS_QUEUE) == count, "the queue holds other messages"
        with ExitStack() as profiling:
            if profile is not None:
                profiling.enter_context(py_spy(self.worker, profile))
            if self.cpu is not None:
                profiling.enter_context(self.cpu.measuring())
            started = time.perf_counter()
            self._control("add_consumer")
            deadline = time.monotonic() + TIMEOUT_SECONDS
            while self.redis.llen(WEBHOOKS_QUEUE) or self.redis.hlen("unacked"):
                assert time.monotonic() < deadline, "the worker did not drain the queue"
                time.sleep(DRAIN_POLL_SECONDS)
            return count / (time.perf_counter() - started)

    def _control(self, command: str) -> None:
        replies = self.producer.control.broadcast(
            command, arguments={"queue": WEBHOOKS_QUEUE}, destination=[self.worker.name], reply=True, timeout=10
        )
        assert replies, f"the worker did not answer {command}"


@contextmanager
def py_spy(worker: WorkerProcess, output: Path) -> Iterator[None]:
    """Sample the worker and its pool processes (py-spy's raw format: one stack a line)."""
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--subprocesses", "--rate", "250"]
    command += ["--format", "raw", "--output", str(output), "--pid", str(worker.process.pid)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        spy.wait(60)


def delivery_body(user_id: str) -> dict[str, object]:
    """The fixture's user.created with its own user (and no email: every user would claim it)."""
    body = copy.deepcopy(EXAMPLE)
    body["data"].update(id=user_id, email_addresses=[])
    return body


def store_events(factory: sessionmaker[Session], prefix: str, count: int) -> list[int]:
    ids = []
    with factory.begin() as session:
        for number in range(count):
            inbox_id = record_delivery(
                session,
                source="clerk",
                external_id=f"msg_{prefix}_{number}",
                event_type="user.created",
                payload=delivery_body(f"user_{prefix}_{number}"),
            )
            assert inbox_id is not None
            ids.append(inbox_id)
    return ids


def measure_noop(drain: Drain, producer: Celery, count: int) -> float:
    def fill() -> None:
        for number in range(count):
            producer.send_task("celery.accumulate", args=(number,), queue=WEBHOOKS_QUEUE, ignore_result=True)

    return drain.timed(count, fill)


def measure_process(
    drain: Drain,
    producer: Celery,
    factory: sessionmaker[Session],
    prefix: str,
    count: int,
    profile: Path | None = None,
) -> float:
    def fill() -> None:
        for inbox_id in store_events(factory, prefix, count):
            producer.send_task(PROCESS_WEBHOOK_TASK, kwargs={"inbox_id": inbox_id}, ignore_result=True)

    rate = drain.timed(count, fill, profile)
    with factory() as session:
        pending = session.scalar(
            select(func.count()).where(
                WebhookInbox.external_id.like(f"msg_{prefix}_%"), WebhookInbox.status != "processed"
            )
        )
    assert pending == 0, f"{pending} rows not processed"
    return rate


def measure_sql_loop(
    engine: Engine, factory: sessionmaker[Session], prefix: str, count: int, processes: int
) -> tuple[float, CpuMeter]:
    """The database's ceiling: `count` stored events run with the worker's statements in a plain
    psycopg loop (bench/webhook_sql_loop.py). Returns events/s and the loops' CPU."""
    ids = store_events(factory, prefix, count)
    result = run_loop(engine, engine.url.render_as_string(hide_password=False), ids, processes)
    with factory() as session:
        pending = session.scalar(
            select(func.count()).where(
                WebhookInbox.external_id.like(f"msg_{prefix}_%"), WebhookInbox.status != "processed"
            )
        )
    assert pending == 0, f"{pending} rows not processed by the loop"
    return result.events_per_second, result.cpu


def signed_deliveries(folder: Path, prefix: str, count: int) -> Path:
    """One line per delivery: svix-id, svix-timestamp, svix-signature, body (one JSON line)."""
    signer, now = Webhook(CLERK_SECRET), datetime.now(UTC)
    path = folder / f"{prefix}.txt"
    with path.open("w") as out:
        for number in range(count):
            msg_id, body = f"msg_{prefix}_{number}", json.dumps(delivery_body(f"user_{prefix}_{number}"))
            out.write(f"{msg_id} {int(now.timestamp())} {signer.sign(msg_id, now, body)} {body}\n")
    return path


def measure_e2e(port: int, factory: sessionmaker[Session], folder: Path, prefix: str, count: int) -> tuple[float, str]:
    deliveries = signed_deliveries(folder, prefix, count)
    # -T: wrk's default 2 s timeout would drop a slow answer's delivery under load.
    command = [WRK, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{TIMEOUT_SECONDS}s", f"-T{STALL_SECONDS}s"]
    command += ["-s", str(ROOT / "bench/bench_webhooks.lua"), f"http://127.0.0.1:{port}", "--"]
    command += [str(deliveries), str(WRK_THREADS)]
    users = select(func.count()).select_from(User).where(User.clerk_id.like(f"user_{prefix}_%"))
    stored = select(func.count()).where(WebhookInbox.external_id.like(f"msg_{prefix}_%"))
    started = time.perf_counter()
    client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    resent = 0
    try:
        with factory() as session:
            seen = seen_stored = 0
            progress_at = stored_at = next_check = time.monotonic()
            while (now_seen := session.scalar(users) or 0) < count:
                now = time.monotonic()
                if now_seen > seen:
                    seen, progress_at = now_seen, now
                assert now - progress_at < STALL_SECONDS, f"stalled at {seen} of {count} users"
                if now >= next_check:  # the receiver's side, checked less often
                    now_stored, next_check = session.scalar(stored) or 0, now + 0.5
                    if now_stored > seen_stored:
                        seen_stored, stored_at = now_stored, now
                    elif now_stored < count and now - stored_at > RESEND_AFTER_SECONDS:
                        resent += resend_lost(port, deliveries, session, prefix)
                        stored_at = now
                session.rollback()
                time.sleep(DRAIN_POLL_SECONDS)
        rate = count / (time.perf_counter() - started)
    finally:
        client.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        output, _ = client.communicate(timeout=30)
    result = re.search(r"^RESULT (.*)$", output, re.M)
    return rate, f"{result[1] if result else 'no summary'}; re-sent {resent}"


def resend_lost(port: int, deliveries: Path, session: Session, prefix: str) -> int:
    """Send again, as the provider would, each delivery that was never stored: wrk drops the
    request of a connection that fails before its answer (a reset under load), and a stopping
    wrk thread abandons the requests it was still writing."""
    stored = set(
        session.scalars(select(WebhookInbox.external_id).where(WebhookInbox.external_id.like(f"msg_{prefix}_%")))
    )
    lost = [line.split(" ", 3) for line in deliveries.read_text().splitlines() if line.split(" ", 1)[0] not in stored]
    for msg_id, timestamp, signature, body in lost:
        headers = {"svix-id": msg_id, "svix-timestamp": timestamp, "svix-signature": signature}
        httpx.post(f"http://127.0.0.1:{port}/webhooks/clerk", content=body, headers=headers, timeout=30)
    return len(lost)


def cpu_bound_line(noop_seconds: dict[str, float], loop_seconds: dict[str, float], count: int, noop_rate: float) -> str:
    """An upper bound for any `webhooks.process` with these statements on this machine: Celery's
    own cost per message (the no-op's CPU, every process) plus the loop's CPU per event (its
    processes, PostgreSQL), with every CPU busy all the time."""
    per_event = (sum(noop_seconds.values()) + sum(loop_seconds.values())) / count
    bound = (os.cpu_count() or 1) / per_event
    return f"no-op + sql loop CPU {1000 * per_event:.2f} ms: at most {bound:.0f} events/s ({bound / noop_rate:.2f})"


def median(rounds: list[Round], name: str) -> float:
    return statistics.median(getattr(one, name) for one in rounds)


def median_ratio(rounds: list[Round], name: str) -> float:
    """The median of each round's ratio to the no-op rate of the same round."""
    return statistics.median(getattr(one, name) / one.noop for one in rounds)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def receiver(runtime_dir: str) -> Iterator[int]:
    """The receiver under gunicorn with its own settings (receiver.gunicorn_conf), on free ports."""
    port = free_port()
    environ = {
        **os.environ,
        "PORT": str(port),
        "WEB_BIND_HOST": "127.0.0.1",
        "RECEIVER_METRICS_PORT": str(free_port()),
        "RUNTIME_DIR": runtime_dir,
    }
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [str(Path(sys.executable).parent / "gunicorn"), "--config", "python:receiver.gunicorn_conf"]
    command += ["--access-logfile", "/dev/null", "receiver.app:create_app()"]
    log = Path(runtime_dir) / "gunicorn.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=environ, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"gunicorn exited with {process.returncode}:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "gunicorn did not come up"
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def procfile_prefetch() -> int:
    """The `--prefetch-multiplier` of the Procfile's `worker` line (what ships), else Celery's 1."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:"))
    found = re.search(r"--prefetch-multiplier=(\d+)", line)
    return int(found.group(1)) if found else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="events per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes of the worker")
    parser.add_argument(
        "--prefetch", type=int, help="the worker's --prefetch-multiplier (default: the Procfile's `worker` line)"
    )
    parser.add_argument(
        "--profile", type=Path, help="after the rounds, drain one more batch of webhooks.process under py-spy (raw)"
    )
    parser.add_argument("--cpu", action="store_true", help="print each drain's CPU time per event, by process")
    args = parser.parse_args()
    with ExitStack() as stack:
        settings, _, _ = scratch_environment(
            stack,
            SIGNUP_CREDITS="100",
            CLERK_WEBHOOK_SIGNING_SECRET=CLERK_SECRET,
            ASAAS_WEBHOOK_TOKEN=uuid.uuid4().hex,
            LOG_LEVEL="WARNING",
        )
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        factory = make_session_factory(engine)
        producer = create_producer(settings)
        prefetch = args.prefetch or procfile_prefetch()
        worker = WorkerProcess(
            producer,
            queues=WEBHOOKS_QUEUE,
            concurrency=args.concurrency,
            extra_args=(f"--prefetch-multiplier={prefetch}",),
        )
        worker.start()
        stack.callback(worker.stop)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhooks-")))
        port = stack.enter_context(receiver(str(folder)))
        cpu = CpuMeter(worker_processes(worker), ("main", "pool")) if args.cpu else None
        drain = Drain(producer, worker, settings.redis_url.get_secret_value(), cpu)

        measure_sql_loop(engine, factory, "warm-loop", 200, args.concurrency)
        measure_noop(drain, producer, 200)  # warm-up: connections, imports, compiled statements
        measure_process(drain, producer, factory, "warm", 200)
        rounds = []
        for number in range(1, args.rounds + 1):
            noop = measure_noop(drain, producer, args.events)
            noop_cpu = cpu.line(args.events) if cpu else ""
            noop_seconds = dict(cpu.seconds) if cpu else {}
            process = measure_process(drain, producer, factory, f"p{number}", args.events)
            process_cpu = cpu.line(args.events) if cpu else ""
            sql_loop, loop_cpu = measure_sql_loop(engine, factory, f"s{number}", args.events, args.concurrency)
            if cpu:
                print(
                    f"round {number} CPU ms per event  no-op: {noop_cpu}  |  process: {process_cpu}"
                    f"  |  sql loop: {loop_cpu.line(args.events)}"
                    f"  |  {cpu_bound_line(noop_seconds, loop_cpu.seconds, args.events, noop)}",
                    flush=True,
                )
            e2e, client = measure_e2e(port, factory, folder, f"e{number}", args.events)
            rounds.append(Round(noop, process, sql_loop, e2e, client))
            print(rounds[-1].line(number), flush=True)
        if args.profile:
            measure_process(drain, producer, factory, "profiled", args.events, profile=args.profile)
            print(f"py-spy samples of one more webhooks.process drain: {args.profile}")
        print(
            f"\nmedian of {args.rounds} rounds, {args.events} events each"
            f" (worker: prefork, {args.concurrency} processes, prefetch multiplier {prefetch};"
            f" {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f})"
        )
        print(f"no-op task (fire and drain)          {median(rounds, 'noop'):8.0f} tasks/s")
        print(
            f"webhooks.process user.created        {median(rounds, 'process'):8.0f} events/s"
            f"  ratio {median_ratio(rounds, 'process'):4.2f} (goal 0.6)"
        )
        print(
            f"the same statements, psycopg loop  {median(rounds, 'sql_loop'):8.0f} events/s"
            f"  ratio {median_ratio(rounds, 'sql_loop'):4.2f} (the database's ceiling, {args.concurrency} processes)"
        )
        print(
            f"end to end through the receiver      {median(rounds, 'e2e'):8.0f} events/s"
            f"  ratio {median_ratio(rounds, 'e2e'):4.2f} (goal 0.5)"
        )
        print(f"  (wrk {WRK_THREADS} threads, {WRK_CONNECTIONS} connections; gunicorn with the receiver's settings)")


if __name__ == "__main__":
    main()
