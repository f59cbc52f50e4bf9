"""What slow ("slowloris") clients do to the receiver under its production gunicorn settings
(Procfile `web`: sync workers, WEB_CONCURRENCY 4, timeout 30 s, BODY_READ_TIMEOUT_SECONDS 10).

    .venv/bin/python bench/bench_slow_clients.py [--attackers 8] [--duration 20]

The scenarios: BENCHMARKS.md ("What each script does"); the figures: docs/production.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ops.local.servers import free_port  # noqa: E402
from tests.support.databases import scratch_environment  # noqa: E402

TOKEN = uuid.uuid4().hex
WORKERS = "4"


def start_receiver(port: int, log_path: Path) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        "--config",
        "python:receiver.gunicorn_conf",
        "--access-logfile",
        "/dev/null",
        "receiver.app:create_app()",
    ]
    env = {**os.environ, "PORT": str(port), "WEB_CONCURRENCY": WORKERS, "RECEIVER_METRICS_PORT": str(free_port())}
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if probe_once(port, timeout=1)[0] == 200:
                return process
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the receiver did not come up")


def probe_once(port: int, timeout: float) -> tuple[int, float]:
    body = json.dumps({"id": f"evt_probe&{uuid.uuid4().hex}", "event": "PAYMENT_CREATED"}).encode()
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            "POST",
            "/webhooks/asaas",
            body=body,
            headers={"asaas-access-token": TOKEN, "content-type": "application/json"},
        )
        return connection.getresponse().status, time.perf_counter() - started
    finally:
        connection.close()


def attacker(port: int, kind: str, stop: threading.Event) -> None:
    """One misbehaving connection, re-opened whenever the server closes it, until `stop`."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                if kind == "slow headers":
                    sock.sendall(b"POST /webhooks/asaas HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
                    while not stop.wait(1):
                        sock.sendall(b"a")
                else:
                    token = f"asaas-access-token: {TOKEN}\r\n" if kind == "slow body, with token" else ""
                    sock.sendall(
                        f"POST /webhooks/asaas HTTP/1.1\r\nHost: bench\r\n{token}"
                        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
                    )
                    while not stop.wait(2):
                        sock.sendall(b" ")
        except OSError:
            stop.wait(0.1)  # closed by the server (408, 401, a killed worker): come back


def scenario(port: int, kind: str, attackers: int, duration: float) -> dict[str, object]:
    stop = threading.Event()
    threads = [threading.Thread(target=attacker, args=(port, kind, stop), daemon=True) for _ in range(attackers)]
    for thread in threads if kind != "none" else []:
        thread.start()
    time.sleep(1)  # let the attackers take their connections
    outcomes: list[tuple[str, float]] = []
    ends = time.monotonic() + duration
    while time.monotonic() < ends:
        try:
            status, seconds = probe_once(port, timeout=5)
            outcomes.append((str(status), seconds))
        except OSError as exc:
            outcomes.append((type(exc).__name__, 5.0))
    stop.set()
    answered = [seconds for status, seconds in outcomes if status == "200"]
    return {
        "probes": len(outcomes),
        "answered 200": len(answered),
        "share answered": len(answered) / len(outcomes),
        "p50 ms": statistics.median(answered) * 1000 if answered else None,
        "max ms": max(answered) * 1000 if answered else None,
        "failures": sorted({status for status, _ in outcomes if status != "200"}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=8, help="connections that misbehave in each scenario")
    parser.add_argument("--duration", type=float, default=20, help="seconds each scenario lasts")
    args = parser.parse_args()
    results = {}
    with ExitStack() as stack:
        scratch_environment(stack, CLERK_WEBHOOK_SIGNING_SECRET="whsec_YmVuY2g=", ASAAS_WEBHOOK_TOKEN=TOKEN)
        port, log_path = free_port(), Path(stack.enter_context(_tempdir())) / "gunicorn.log"
        server = start_receiver(port, log_path)
        try:
            for kind in ("none", "slow headers", "slow body, with token", "slow body, no token"):
                before = log_path.read_text(errors="replace").count("WORKER TIMEOUT")
                results[kind] = scenario(port, kind, args.attackers, args.duration)
                time.sleep(2)  # the attackers' connections close; killed workers come back
                results[kind]["workers killed (timeout)"] = (
                    log_path.read_text(errors="replace").count("WORKER TIMEOUT") - before
                )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    print(
        f"gunicorn {WORKERS} sync workers (timeout 30 s), BODY_READ_TIMEOUT_SECONDS 10, {args.attackers} attackers,"
        f" {args.duration:g} s per scenario, one probe at a time (5 s timeout), {os.cpu_count()} CPUs"
    )
    for kind, figures in results.items():
        p50 = "-" if figures["p50 ms"] is None else f"{figures['p50 ms']:.1f}"
        worst = "-" if figures["max ms"] is None else f"{figures['max ms']:.0f}"
        print(
            f"  {kind:22s} answered {figures['answered 200']:4d}/{figures['probes']:<4d}"
            f" ({figures['share answered']:5.1%})  p50 {p50:>6s} ms  max {worst:>5s} ms"
            f"  workers killed {figures['workers killed (timeout)']}  failures {figures['failures']}"
        )


def _tempdir():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="pw-bench-slow-")


if __name__ == "__main__":
    main()
