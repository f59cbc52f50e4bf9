"""One fault scenario's world: its own PostgreSQL and Redis, and the Procfile's `web`, `worker`, `usage`
and `beat` pointed at them, each of which the test may kill, stop and start again."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr
from redis import Redis

from messaging.celery_config import celery_config
from models.settings import Settings
from ops.local.servers import LocalPostgres, LocalRedis, free_port
from tests.conftest import ASAAS_TEST_TOKEN, CLERK_TEST_SECRET, INGEST_TEST_KEY, USAGE_TEST_KEYS
from tests.faults.processes import ProcfileProcess, log_says, web_ready
from tests.faults.workload import SIGNUP_CREDITS
from tests.support.servers import PROJECT_ROOT, procfile_commands

PLUGIN = "tests.faults.worker_plugin"
# Set to a folder to keep each scenario's logs (web, worker, beat, PostgreSQL) after it ends.
KEEP_LOGS_VARIABLE = "FAULT_LOGS_DIR"
# Variables of the pytest process (or the shared test run) that must not leak into the scenario.
_OWN_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SERVICE_SCHEMA", "PROMETHEUS_MULTIPROC_DIR", "FLOWER_BASIC_AUTH")
# The result dict is flat: stop at its closing brace (a JSON log line goes on after it).
_SWEEP_RESULT = re.compile(r"inbox\.sweep\[[^\]]*\] succeeded in [0-9.e-]+s: (\{[^{}]*\})")


@dataclass(frozen=True)
class SweepSettings:
    interval: float  # SWEEP_INTERVAL_SECONDS
    pending_after: float  # SWEEP_PENDING_AFTER_SECONDS

    @property
    def bound(self) -> float:
        """Issue 9's bound: an accepted delivery is final this long after a fault ended."""
        return 2 * (self.interval + self.pending_after)


SHORT_SWEEP = SweepSettings(interval=2, pending_after=8)
DEFAULT_SWEEP = SweepSettings(interval=30, pending_after=60)  # models.settings' defaults


def queue_names() -> list[str]:
    """Every queue the workers' configuration declares (where sweeps and process messages wait)."""
    settings = Settings.model_construct(redis_url=SecretStr("redis://127.0.0.1:1/0"))
    return [queue.name for queue in celery_config(settings)["task_queues"]]


@dataclass
class Cluster:
    root: Path
    postgres: LocalPostgres
    redis: LocalRedis
    sweep: SweepSettings
    env: dict[str, str]
    processes: dict[str, ProcfileProcess] = field(default_factory=dict)

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    @property
    def web(self) -> ProcfileProcess:
        return self.processes["web"]

    @property
    def worker(self) -> ProcfileProcess:
        return self.processes["worker"]

    @property
    def usage(self) -> ProcfileProcess:
        return self.processes["usage"]

    @property
    def beat(self) -> ProcfileProcess:
        return self.processes["beat"]

    def start(self, *names: str) -> None:
        """Start these processes (all four by default) and wait until each is ready."""
        names = names or ("web", "worker", "usage", "beat")
        for name in names:
            self.processes[name].start()
        for name in names:
            self.processes[name].wait_ready()

    def restart(self, name: str) -> None:
        self.processes[name].start()
        self.processes[name].wait_ready()

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A plain connection to the scenario's database (autocommit)."""
        return psycopg.connect(self.postgres.url, autocommit=True, connect_timeout=5)

    def redis_client(self) -> Redis:
        return Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)

    def sweeps(self) -> list[dict[str, int]]:
        """The results of every `inbox.sweep` the worker ran (from its INFO log)."""
        return [ast.literal_eval(match) for match in _SWEEP_RESULT.findall(self.worker.log_text())]

    def release_blocked(self) -> None:
        """Let the runs the worker plugin blocks go on (and block none from now on)."""
        Path(self.env["FAULT_RELEASE_FILE"]).touch()

    def recovered_by_sweeper(self) -> int:
        return sum(int(result.get("requeued", 0)) for result in self.sweeps())

    def _keep_logs(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for log in [*self.root.glob("*.log"), self.postgres.data_dir / "server.log"]:
            with contextlib.suppress(OSError):
                shutil.copy(log, folder / log.name)

    def close(self) -> None:
        errors = []
        for process in self.processes.values():
            try:
                process.kill()
            except Exception as exc:  # keep cleaning up; report at the end
                errors.append(exc)
        self.redis.kill()
        with contextlib.suppress(Exception):
            self.postgres.stop("immediate")
        if keep := os.environ.get(KEEP_LOGS_VARIABLE):
            self._keep_logs(Path(keep) / self.root.parent.name)
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise errors[0]


def scenario_environment(
    postgres: LocalPostgres, redis_server: LocalRedis, root: Path, sweep: SweepSettings, **overrides: str
) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _OWN_VARIABLES}
    (root / "tmp").mkdir()
    env.update(
        # The Procfile names console scripts (gunicorn, celery) installed beside this interpreter,
        # and the processes import this checkout's code (and the worker plugin from tests/).
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=str(PROJECT_ROOT),
        PYTHONUNBUFFERED="1",
        DATABASE_URL=postgres.url,
        REDIS_URL=redis_server.url(0),
        CLERK_WEBHOOK_SIGNING_SECRET=CLERK_TEST_SECRET,
        ASAAS_WEBHOOK_TOKEN=ASAAS_TEST_TOKEN,
        INGEST_SIGNING_KEY=INGEST_TEST_KEY,
        USAGE_SERVICE_KEYS=",".join(f"{name}:{key}" for name, key in USAGE_TEST_KEYS.items()),
        RECEIVER_METRICS_PORT=str(free_port()),
        SIGNUP_CREDITS=str(SIGNUP_CREDITS),
        DB_LOCK_TIMEOUT_MS="10000",
        PORT=str(free_port()),
        WEB_CONCURRENCY="2",
        WORKER_CONCURRENCY="2",
        SWEEP_INTERVAL_SECONDS=str(sweep.interval),
        SWEEP_PENDING_AFTER_SECONDS=str(sweep.pending_after),
        PROMETHEUS_MULTIPROC_DIR=str(root / "metrics"),
        TMPDIR=str(root / "tmp"),  # beat's schedule file (the Procfile puts it in $TMPDIR)
        FAULT_RELEASE_FILE=str(root / "release-blocked-runs"),  # tests/faults/worker_plugin.py
    )
    env.update(overrides)
    return env


@contextlib.contextmanager
def cluster(
    root: Path,
    template: LocalPostgres,
    sweep: SweepSettings,
    *,
    with_plugin: bool = False,
    redis_config: Mapping[str, str] | None = None,
    **env: str,
) -> Iterator[Cluster]:
    """Servers started (a copy of the migrated template database, an empty Redis: no persistence
    unless `redis_config` says so), processes defined but not started. Everything is killed and
    removed on the way out, also on failure."""
    root.mkdir(parents=True)
    root.chmod(0o755)  # the database's OS user must reach its data folder
    postgres = template.copy_to(root / "postgres")
    redis_server = LocalRedis(root / "redis", config=dict(redis_config or {}))
    world = Cluster(
        root, postgres, redis_server, sweep, scenario_environment(postgres, redis_server, root, sweep, **env)
    )
    try:
        postgres.start()
        redis_server.start()
        commands = procfile_commands()
        include = f" --include={PLUGIN}" if with_plugin else ""
        port = int(world.env["PORT"])
        world.processes = {
            "web": ProcfileProcess("web", commands["web"], world.env, root / "web.log", web_ready(port)),
            "worker": ProcfileProcess(
                "worker", commands["worker"] + include, world.env, root / "worker.log", log_says(r"celery@\S+ ready\.")
            ),
            # The debits' own worker (batched usage.debit, its own prefetch window).
            "usage": ProcfileProcess(
                "usage", commands["usage"] + include, world.env, root / "usage.log", log_says(r"usage@\S+ ready\.")
            ),
            "beat": ProcfileProcess(
                "beat", commands["beat"], world.env, root / "beat.log", log_says(r"beat: Starting")
            ),
        }
        yield world
    finally:
        world.close()
