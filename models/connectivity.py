"""Can this process reach its servers? One line that says which, where and why not.

Every entry point (the CLI, `run`, the worker, beat, Flower, gunicorn) checks PostgreSQL and
Redis before it starts, so a wrong DATABASE_URL or REDIS_URL stops it at once with a message
such as

    DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:5433: Connection refused

instead of a long traceback or a retry loop. The message names the variable, the host and the
port, and the driver's reason; it never contains the URL's password.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import psycopg
import redis
from redis.exceptions import RedisError

from models.settings import ConfigError, Settings

CONNECT_TIMEOUT_SECONDS = 5

# libpq: 'connection to server at "127.0.0.1", port 5433 failed: FATAL:  database "x" does not exist'
_LIBPQ_REASON = re.compile(r"^.*failed:\s*(?:FATAL:\s*)?(?P<reason>.+)$", re.M)
# redis-py: 'Error 111 connecting to 127.0.0.1:6399. Connection refused.'
_REDIS_PREFIX = re.compile(r"^Error \d+ connecting to \S+\.\s+")


class ServerUnreachable(RuntimeError):
    """A server named by a configuration variable cannot be used. The message is one line."""

    def __init__(self, variable: str, server: str, url: str, reason: str) -> None:
        self.variable = variable
        self.server = server
        self.address = address_of(url)
        self.reason = _without_password(reason, url)
        super().__init__(f"{variable}: cannot reach {server} at {self.address}: {self.reason}")


def check_postgresql(database_url: str, variable: str = "DATABASE_URL") -> None:
    """Connect once and run `SELECT 1`; ServerUnreachable if that fails."""
    try:
        with psycopg.connect(libpq_url(database_url), connect_timeout=CONNECT_TIMEOUT_SECONDS) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        raise ServerUnreachable(variable, "PostgreSQL", database_url, postgresql_reason(exc)) from exc


def check_redis(redis_url: str, variable: str = "REDIS_URL") -> None:
    """PING once; ServerUnreachable if that fails."""
    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=CONNECT_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except RedisError as exc:
        raise ServerUnreachable(variable, "Redis", redis_url, redis_reason(exc)) from exc
    finally:
        client.close()


def postgresql_reason(error: BaseException) -> str:
    """libpq's reason, without its multi-line hints: 'Connection refused', 'password
    authentication failed for user "x"', 'database "x" does not exist'."""
    text = str(error)
    reasons = [match.group("reason").strip() for match in _LIBPQ_REASON.finditer(text)]
    if reasons:
        return reasons[-1]
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first.strip()


def redis_reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _REDIS_PREFIX.sub("", text).rstrip(".") or type(error).__name__


def libpq_url(database_url: str) -> str:
    """The URL as libpq reads it (SQLAlchemy's `postgresql+psycopg://` scheme is not libpq's)."""
    return re.sub(r"^postgresql\+psycopg://", "postgresql://", database_url)


def address_of(url: str) -> str:
    """host:port of a server URL (a unix socket path as it is), never its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    default_port = 5432 if parts.scheme.startswith("postgres") else 6379
    try:
        port = parts.port or default_port
    except ValueError:  # a port that is not a number: say what was written
        return parts.netloc.rpartition("@")[2]
    return f"{host}:{port}"


def masked_url(url: str) -> str:
    """The URL with its password replaced by ***, to show which server is in use."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(SplitResult(parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))


def _without_password(text: str, url: str) -> str:
    # Drivers do not echo passwords, but the reason is printed on a terminal and in logs:
    # make sure of it.
    password = urlsplit(url).password
    if not password:
        return text
    return text.replace(password, "***").replace(unquote(password), "***")


def exit_unless_reachable(load: Callable[[], Settings], *, check_servers: bool = True) -> Settings:
    """For a service process starting (worker, beat, gunicorn): load the settings and check the
    servers; on failure print one line to stderr and exit with code 2. LOG_LEVEL=DEBUG shows
    the traceback instead. `check_servers=False`: the settings only."""
    try:
        settings = load()
        if check_servers:
            check_postgresql(settings.database_url.get_secret_value())
            check_redis(settings.redis_url.get_secret_value())
    except (ConfigError, ServerUnreachable) as exc:
        if os.environ.get("LOG_LEVEL", "").strip().upper() == "DEBUG":
            raise
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return settings
