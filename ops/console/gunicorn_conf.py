"""Gunicorn settings for the console:
`gunicorn --config python:ops.console.gunicorn_conf "ops.console.app:create_app()"`.

Read when gunicorn starts: CONSOLE_ADDRESS and CONSOLE_PORT (docs/configuration.md). The master
refuses to start without CONSOLE_BASIC_AUTH (one line, exit code 2), as Flower does, and with
PostgreSQL or Redis unreachable. Without CONSOLE_SECRET_KEY it makes one here, before forking,
so every worker signs and checks the forms' CSRF tokens with the same key.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import NoReturn

from models.connectivity import exit_unless_reachable
from models.logs import gunicorn_log_config
from models.settings import ConfigError, load_console_settings, load_settings

_ADDRESS = os.environ.get("CONSOLE_ADDRESS", "").strip() or "127.0.0.1"
_PORT = os.environ.get("CONSOLE_PORT", "").strip() or "5556"
bind = f"{_ADDRESS}:{_PORT}"
# A few people at a time, each page a handful of queries.
workers = 2
worker_class = "sync"
timeout = 30
graceful_timeout = 10

# Who, what, the status and how long: no query string (filter values) or header is written.
accesslog = "-"
access_log_format = '%(h)s %(u)s "%(m)s %(U)s" %(s)s %(M)sms'

logconfig_dict = gunicorn_log_config()

# Under `run`, RUNTIME_DIR is the project's .local/: the console's control socket is its own, not
# the receiver's (both are gunicorn) nor another checkout's.
if _RUNTIME_DIR := os.environ.get("RUNTIME_DIR", "").strip():
    control_socket = str(Path(_RUNTIME_DIR) / "gunicorn-console.ctl")

if not os.environ.get("CONSOLE_SECRET_KEY", "").strip():
    os.environ["CONSOLE_SECRET_KEY"] = secrets.token_urlsafe(32)


def on_starting(server: object) -> None:
    """No login configured, or a server that does not answer: one line, exit code 2."""
    if not os.environ.get("CONSOLE_BASIC_AUTH", "").strip():
        _refuse("CONSOLE_BASIC_AUTH (user:password) is not set: the console does not run without authentication")
    try:
        load_console_settings()
    except ConfigError as exc:
        _refuse(str(exc))
    exit_unless_reachable(load_settings)


def _refuse(reason: str) -> NoReturn:
    print(f"Error: {reason}", file=sys.stderr, flush=True)
    raise SystemExit(2)
