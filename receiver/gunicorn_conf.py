"""Gunicorn settings for the receiver:
`gunicorn --config python:receiver.gunicorn_conf "receiver.app:create_app()"`.

Gunicorn imports this module when it starts, so reading the environment here is reading it at
start-up (the variables: docs/configuration.md). The master serves every worker's metrics on
an address of their own, never on the webhook port. Sync workers: a slow client holds one for as
long as it trickles bytes, hence the buffering proxy in production (docs/production.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

from models.connectivity import exit_unless_reachable
from models.logs import chosen_level, gunicorn_log_config
from models.settings import ConfigError, load_settings
from receiver.access_log import ACCESS_LOG_FORMAT


def _int_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"configuration error: {name} must be an integer") from None
    if value <= 0:
        raise ConfigError(f"configuration error: {name} must be positive")
    return value


def _text_from_env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


bind = f"{_text_from_env('WEB_BIND_HOST', '0.0.0.0')}:{_int_from_env('PORT', 8000)}"
metrics_address = _text_from_env("RECEIVER_METRICS_ADDRESS", "127.0.0.1")
metrics_port = _int_from_env("RECEIVER_METRICS_PORT", 9101)
workers = _int_from_env("WEB_CONCURRENCY", 4)
# Sync workers: one request per process, each answered in milliseconds (an insert and an
# LPUSH); a worker stuck on a dead dependency is killed and replaced after `timeout`.
worker_class = "sync"
timeout = 30
graceful_timeout = 20

# Access log without query strings, referrers or user agents (receiver/access_log.py), from a
# logger that works out only the fields the format names (gunicorn's builds some sixty).
accesslog = "-"
access_log_format = ACCESS_LOG_FORMAT
logger_class = "receiver.access_log.AccessLogger"

# structlog renders every line (LOG_FORMAT=json|console; models.logs), with the request's context;
# LOG_LEVEL=DEBUG adds a `webhook.accepted`/`duplicate`/`queued` line per delivery.
logconfig_dict = gunicorn_log_config(
    receiver={"level": logging.getLevelName(chosen_level()), "handlers": ["error_console"], "propagate": False}
)

_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
if not _MULTIPROC_DIR:
    # Every worker process counts its own requests: without a shared folder /metrics would show
    # whichever worker answered the scrape. Set here, before gunicorn forks its workers (the
    # app, and prometheus_client with it, is imported in each worker after the fork).
    _MULTIPROC_DIR = tempfile.mkdtemp(prefix="pedro-webhooks-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _MULTIPROC_DIR


class _Worker(Protocol):
    """What the hooks read of a gunicorn worker (gunicorn ships no type information)."""

    pid: int


class _Logger(Protocol):
    def info(self, msg: str, *args: object) -> None: ...
    def error(self, msg: str, *args: object) -> None: ...


class _Arbiter(Protocol):
    log: _Logger


def when_ready(server: _Arbiter) -> None:
    """Serve the workers' metrics from the master, on their own address and port.

    A port that cannot be bound is logged, not fatal: webhooks must be received all the same.
    (The workers forked after this inherit the listening socket but never accept on it.)"""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(metrics_port, addr=metrics_address, registry=registry)
    except OSError as exc:
        server.log.error("receiver metrics could not listen on %s:%s: %s", metrics_address, metrics_port, exc)
        return
    server.log.info("receiver metrics on http://%s:%s/metrics", metrics_address, metrics_port)


# Under `run`, RUNTIME_DIR is the project's .local/: two checkouts on one machine never share a
# control socket (gunicorn >= 25; older releases ignore the setting).
if _RUNTIME_DIR := os.environ.get("RUNTIME_DIR", "").strip():
    control_socket = str(Path(_RUNTIME_DIR) / "gunicorn.ctl")


def on_starting(server: object) -> None:
    """Refuse to start when PostgreSQL or Redis does not answer (one line, exit code 2); start
    from empty metric files: counts left by a previous run would be added to ours."""
    exit_unless_reachable(load_settings)
    if _MULTIPROC_DIR:
        folder = Path(_MULTIPROC_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)


def child_exit(server: object, worker: _Worker) -> None:
    """Fold an exited worker's live gauges away (its counters and histograms are kept)."""
    if _MULTIPROC_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
