"""Logging for every process: structlog, JSON in production, readable on a terminal.

One configuration for the receiver (gunicorn's `logconfig_dict` uses `formatter()`), the worker
and beat (`configure_logging` from Celery's `setup_logging` signal) and the CLI. Lines written
through the standard library go through the same processors, so each carries the context bound
for the work in progress (`bind_event(...)`). Values under secret-looking keys are replaced and a
password in a URL is masked. LOG_FORMAT and LOG_LEVEL: docs/configuration.md.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

LOG_FORMATS = ("json", "console")
# What a line about an event carries (bound per task and per request).
EVENT_KEYS = ("inbox_id", "source", "provider_event_id", "event_type", "task_id", "outcome")

# Values under these keys never reach a log line, at any level.
_SECRET_KEYS = re.compile(r"password|secret|token|signature|authorization|cookie|payload|^body$", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I)
REDACTED = "[redacted]"


class LogConfigError(ValueError):
    """LOG_FORMAT or LOG_LEVEL holds a value that is not one of the known ones."""


def bind_event(**fields: Any) -> None:
    """Add fields to every line logged from here on in this task or request."""
    structlog.contextvars.bind_contextvars(**{key: value for key, value in fields.items() if value is not None})


def clear_event() -> None:
    structlog.contextvars.clear_contextvars()


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str) and "://" in value:
            event_dict[key] = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", value)
    return event_dict


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    # Asked for every key of every line, and lines repeat the same few keys: a regex search
    # per key was most of this processor's cost.
    return _SECRET_KEYS.search(key) is not None


def add_pid(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.setdefault("pid", os.getpid())  # which gunicorn or pool process wrote it
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_pid,
        redact,
    ]


def chosen_format(stream: TextIO | None = None) -> str:
    value = os.environ.get("LOG_FORMAT", "").strip().lower()
    if value and value not in LOG_FORMATS:
        raise LogConfigError("configuration error: LOG_FORMAT must be json or console")
    if value:
        return value
    stream = stream or sys.stderr
    return "console" if stream.isatty() else "json"


def chosen_level(default: str = "INFO") -> int:
    name = (os.environ.get("LOG_LEVEL", "").strip() or default).upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise LogConfigError("configuration error: LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
    return level


def formatter(log_format: str | None = None) -> logging.Formatter:
    """A stdlib formatter that renders any record through structlog (for handlers made elsewhere,
    e.g. gunicorn's `logconfig_dict`: `{"()": "models.logs.formatter"}`)."""
    log_format = log_format or chosen_format()
    renderers: list[Processor]
    if log_format == "json":
        # A record's exc_info (a tuple) becomes its traceback as text: JSON cannot hold the tuple.
        renderers = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        renderers = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
    )


def gunicorn_log_config(**loggers: dict[str, Any]) -> dict[str, Any]:
    """Gunicorn's `logconfig_dict`: its error log to stderr and access log to stdout, plus
    `loggers`, every line rendered by `formatter`. Given in full because gunicorn replaces each
    top-level key of its defaults with ours."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": "WARNING", "handlers": ["error_console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
            **loggers,
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stdout"},
            "error_console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stderr"},
        },
        "formatters": {"generic": {"()": "models.logs.formatter"}},
    }


class _Handler(logging.StreamHandler[TextIO]):
    """Ours: replaced when logging is configured again, while others' handlers stay. Without a
    stream of its own it writes to whatever `sys.stderr` is when a line is written (a test
    runner or a CLI runner may swap it)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def configure_logging(
    level: int | str | None = None, stream: TextIO | None = None, default_level: str = "INFO"
) -> None:
    """Route the standard library's and structlog's loggers to one handler on `stream`.
    `level` wins over LOG_LEVEL, which wins over `default_level`."""
    handler = _Handler(stream)
    handler.setFormatter(formatter(chosen_format(stream or sys.stderr)))
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level if level is not None else chosen_level(default_level))
    configure_structlog()


def configure_structlog() -> None:
    """structlog's own loggers hand their events to the standard library's handlers."""
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
