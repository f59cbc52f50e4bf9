"""The receiver's access log line (receiver/access_log.py) reads exactly as gunicorn's own would.
The line as a running gunicorn writes it: tests/receiver/test_receiver_gunicorn.py."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from receiver.access_log import ACCESS_LOG_FORMAT, AccessLogger

ENVIRON = {
    "REQUEST_METHOD": "POST",
    "RAW_URI": "/webhooks/clerk?x=1",
    "PATH_INFO": "/webhooks/clerk",
    "QUERY_STRING": "x=1",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "203.0.113.9",
    "HTTP_USER_AGENT": 'Svix-Webhooks/1.0 "quoted"',
}


class _Request:
    headers: ClassVar = [("USER-AGENT", 'Svix-Webhooks/1.0 "quoted"'), ("SVIX-ID", "msg_1")]


class _Response:
    status = "401 UNAUTHORIZED"
    sent = 57
    headers: ClassVar = [("Content-Type", "application/json"), ("Content-Length", "57")]


def _line(logger_class: type[Logger], access_log_format: str, took: timedelta) -> str:
    config = Config()
    config.set("access_log_format", access_log_format)
    logger = logger_class(config)
    atoms = logger.atoms_wrapper_class(logger.atoms(_Response, _Request, ENVIRON, took))
    return access_log_format % atoms


@pytest.mark.parametrize("took", [timedelta(microseconds=2_345), timedelta(seconds=3, microseconds=7)])
def test_the_receivers_line_is_gunicorns(took):
    ours = _line(AccessLogger, ACCESS_LOG_FORMAT, took)
    assert ours == _line(Logger, ACCESS_LOG_FORMAT, took)
    assert ours.startswith('203.0.113.9 "POST /webhooks/clerk" 401 57 ')


def test_every_field_it_works_out_reads_as_gunicorns():
    every = " ".join(f"%({name})s" for name in "hlsmUqHbBTDMLp")
    took = timedelta(seconds=1, microseconds=250_000)
    assert _line(AccessLogger, every, took) == _line(Logger, every, took)


OTHER_FORMATS = ['%(h)s "%(r)s" %({user-agent}i)s', "%(a)s %({svix-id}i)s %({content-type}o)s"]


@pytest.mark.parametrize("access_log_format", OTHER_FORMATS)
def test_a_format_naming_other_fields_gets_gunicorns_own(access_log_format):
    took = timedelta(microseconds=900)
    line = _line(AccessLogger, access_log_format, took)
    assert line == _line(Logger, access_log_format, took)
    assert "-" not in line.split()  # every field was found, none fell back to gunicorn's "-"
