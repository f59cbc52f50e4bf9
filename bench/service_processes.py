"""The service's own processes for benchmarks, started exactly as the Procfile starts them.

bench_memory.py and bench_scale_out.py measure the processes that ship, so they take their
commands from the Procfile (whatever it says after a merge), started with `sh -c 'exec ...'` in a
process group of their own: stopping a process stops everything it forked, and nothing is left
behind even when the bench fails half-way.

Memory is read from /proc/<pid>/smaps_rollup (Linux): RSS, and USS (the pages only this process
maps: Private_Clean + Private_Dirty), which is what a forked worker really costs on top of the
pages it shares with its parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from celery import Celery

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def procfile_command(name: str) -> str:
    """The command of Procfile process `name` (as a shell command line)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, _, command = line.partition(":")
        if key.strip() == name:
            return command.strip()
    raise KeyError(f"the Procfile has no {name!r} process")


def procfile_names() -> list[str]:
    return [line.partition(":")[0].strip() for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line]


@dataclass
class ServiceProcess:
    """One Procfile process (its shell `exec`s the command, so `pid` is the command's own)."""

    name: str
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """Direct children: gunicorn's workers, or the prefork pool of a celery worker."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.pid:
                        found.append(int(entry.name))
        return sorted(found)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the group (warm shutdown), SIGKILL it if it has not ended in time."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # anything of the group still there
        self.process.wait()


def start_procfile(name: str, env: dict[str, str], log: Path, extra_args: str = "") -> ServiceProcess:
    """Start Procfile process `name` with `env` (plus the venv's bin on PATH), output to `log`."""
    command = f"exec {procfile_command(name)} {extra_args}".strip()
    environment = {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["sh", "-c", command],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServiceProcess(name, process)


def start_receiver(env: dict[str, str], port: int, web_workers: int, log: Path) -> ServiceProcess:
    """The Procfile's `web` process on 127.0.0.1:`port`, answering before this returns. Its
    metric files go beside `log` (removed with it), its metrics port is a free one."""
    metrics_dir = log.parent / f"metrics-{port}"
    metrics_dir.mkdir(exist_ok=True)
    env = {
        **env,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PORT": str(port),
        "WEB_BIND_HOST": "127.0.0.1",
        "WEB_CONCURRENCY": str(web_workers),
        "RECEIVER_METRICS_PORT": str(free_port()),
    }
    receiver = start_procfile("web", env, log, extra_args="--access-logfile /dev/null")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if receiver.process.poll() is not None:
            raise RuntimeError(f"the receiver exited with {receiver.process.returncode}: see {log}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            if len(receiver.children()) >= web_workers:
                return receiver
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    receiver.stop()
    raise RuntimeError(f"the receiver did not come up: see {log}")


def start_celery_worker(
    producer: Celery,
    env: dict[str, str],
    log: Path,
    concurrency: int,
    queues: str | None = None,
    name: str = "worker",
    extra_args: str = "",
) -> ServiceProcess:
    """Procfile process `name` (a `celery worker`) with `concurrency` pool processes (the Procfile
    reads WORKER_CONCURRENCY for `worker`, USAGE_CONCURRENCY for `usage`), its own hostname, and
    `--queues` replaced when given; returns once it answers a ping."""
    hostname = f"bench-{uuid.uuid4().hex[:8]}@localhost"
    extra = f"--hostname={hostname} --without-gossip --without-mingle"
    if queues is not None:
        extra += f" --queues={queues}"  # the last --queues on the command line wins
    extra += f" {extra_args}" if extra_args else ""
    processes = {"WORKER_CONCURRENCY": str(concurrency), "USAGE_CONCURRENCY": str(concurrency)}
    worker = start_procfile(name, {**env, **processes}, log, extra_args=extra)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"the celery worker exited with {worker.process.returncode}: see {log}")
        if producer.control.ping(destination=[hostname], timeout=0.5) and len(worker.children()) >= concurrency:
            return worker
    worker.stop()
    raise RuntimeError(f"the celery worker did not answer a ping: see {log}")


@dataclass(frozen=True)
class Memory:
    rss_mib: float
    uss_mib: float


def memory(pid: int) -> Memory:
    """RSS and USS of one process, from /proc/<pid>/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        fields[key] = int(value.split()[0])  # kB
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return Memory(fields["Rss"] / 1024, uss / 1024)


class CpuMeter:
    """Where a stretch of work's CPU went: the CPU time each group of processes used during it
    (the service's own, as `own()` groups them, and every PostgreSQL and Redis process on this
    machine, the servers the service talks to), per unit of work (an event, a request), and how
    busy the whole machine was. Read from the kernel before and after the stretch."""

    SERVERS = ("postgres", "redis")

    def __init__(self, own: Callable[[], dict[psutil.Process, str]], groups: tuple[str, ...]) -> None:
        self.own = own
        self.groups = (*groups, *self.SERVERS)
        self.seconds: dict[str, float] = {}  # CPU seconds of each group in the latest stretch
        self.busy = 0.0  # the machine's busy share (0-1) in the latest stretch

    def _snapshot(self) -> dict[tuple[int, float], tuple[str, float]]:
        processes = self.own()
        for process in psutil.process_iter(["name"]):
            name = process.info["name"] or ""
            if name.startswith("postgres"):
                processes[process] = "postgres"
            elif name.startswith("redis-server"):
                processes[process] = "redis"
        snapshot = {}
        for process, group in processes.items():
            try:
                times = process.cpu_times()
                snapshot[(process.pid, process.create_time())] = (group, times.user + times.system)
            except psutil.NoSuchProcess:
                pass
        return snapshot

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        before = self._snapshot()
        psutil.cpu_percent()  # starts psutil's count of the machine's busy time
        yield
        self.busy = psutil.cpu_percent() / 100  # since the call above
        after = self._snapshot()
        self.seconds = dict.fromkeys(self.groups, 0.0)
        for key, (group, seconds) in after.items():
            self.seconds[group] += seconds - before.get(key, (group, 0.0))[1]

    def line(self, units: float) -> str:
        """The latest stretch's CPU milliseconds per unit of work, by group, and the machine's load."""
        used = "  ".join(f"{group} {1000 * self.seconds[group] / units:.2f}" for group in self.groups)
        return f"{used}  (machine {100 * self.busy:.0f} % busy)"


def free_port() -> int:
    from ops.local.servers import free_port as _free_port

    return _free_port()


def exit_on_sigterm() -> None:
    """SIGTERM (`timeout`, Ctrl-C of a wrapper) ends the bench through its `finally` blocks and
    ExitStack callbacks: the processes it started are stopped and its database is dropped."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
