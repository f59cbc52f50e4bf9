"""Gunicorn's access log line, with only the fields its format names worked out.

Gunicorn's `Logger.atoms` builds every field a format could name for every request: a time
formatted with strftime, the request line, and one entry for each request header, response
header and WSGI environ variable (some sixty), all then copied and escaped by `SafeAtoms`. The
receiver's format (ACCESS_LOG_FORMAT, set in receiver/gunicorn_conf.py) names six of them.
Working out only those took the line from 118-131 to 80-99 µs of CPU (in process; BENCHMARKS.md,
"Latest run"), and the line reads exactly as before. A format that names anything else (a
header, the time, the user agent) gets gunicorn's own fields, so `--access-logformat` keeps
meaning what gunicorn documents.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger

# Who, what, the status, the size and how long: no query string, referrer or user agent, so
# nothing a client sent in a header (or a token someone put in a URL) is written anywhere.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'

_NAMED = re.compile(r"%\((?P<name>[^)]*)\)")


class AccessLogger(Logger):
    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> dict[str, Any]:
        names = _names_in(self.cfg.access_log_format)
        if not names <= _SIMPLE.keys():
            return super().atoms(resp, req, environ, request_time)
        return {name: _SIMPLE[name](resp, environ, request_time) for name in names}


@functools.cache
def _names_in(access_log_format: str) -> frozenset[str]:
    return frozenset(match["name"] for match in _NAMED.finditer(access_log_format))


def _status(resp: Any) -> Any:
    status = resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else status


def _sent(resp: Any) -> Any:
    return getattr(resp, "sent", None)


# Each as gunicorn's `Logger.atoms` computes it (gunicorn 27; tests/receiver/test_access_log.py
# compares the two).
_SIMPLE = {
    "h": lambda resp, environ, took: environ.get("REMOTE_ADDR", "-"),
    "l": lambda resp, environ, took: "-",
    "s": lambda resp, environ, took: _status(resp),
    "m": lambda resp, environ, took: environ.get("REQUEST_METHOD"),
    "U": lambda resp, environ, took: environ.get("PATH_INFO"),
    "q": lambda resp, environ, took: environ.get("QUERY_STRING"),
    "H": lambda resp, environ, took: environ.get("SERVER_PROTOCOL"),
    "b": lambda resp, environ, took: "-" if _sent(resp) is None else str(_sent(resp)),
    "B": lambda resp, environ, took: _sent(resp),
    "T": lambda resp, environ, took: took.seconds,
    "D": lambda resp, environ, took: took.seconds * 1_000_000 + took.microseconds,
    "M": lambda resp, environ, took: took.seconds * 1000 + int(took.microseconds / 1000),
    "L": lambda resp, environ, took: f"{took.seconds}.{took.microseconds:06d}",
    "p": lambda resp, environ, took: f"<{os.getpid()}>",
}
