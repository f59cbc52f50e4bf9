"""The console in this process (Flask's test client) on the run's database and broker, its
logins, and how a test reads a form's CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from models.settings import ConsoleSettings

OPERATOR = ("ana", "ana-console-password")
READER = ("rui", "rui-console-password")
LOGINS = f"{OPERATOR[0]}:{OPERATOR[1]},{READER[0]}:{READER[1]}"

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def console_settings() -> ConsoleSettings:
    return ConsoleSettings(console_basic_auth=LOGINS, console_operators=OPERATOR[0])


@pytest.fixture(scope="session")
def console_app(settings) -> Iterator[Flask]:
    from ops.console.app import create_app
    from ops.console.resources import EXTENSION

    app = create_app(settings, console_settings())
    yield app
    app.extensions[EXTENSION].close()


@pytest.fixture
def client(console_app, session_factory) -> FlaskClient:
    """A browser of its own (cookies: the CSRF session); the tables are emptied after the test."""
    return console_app.test_client()


def csrf_token(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)
