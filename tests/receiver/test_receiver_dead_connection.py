"""The receiver's pool does not ping a connection before using it (a round trip per delivery):
a pooled connection whose backend died is found dead by the INSERT itself, and the delivery is
stored on a fresh connection, answered 200 and enqueued as usual; /readyz does the same.

The backend is killed with pg_terminate_backend, and only the receiver's own: the pid comes
from the receiver's pooled connection, on the test run's private database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from flask import Flask
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from tenacity import Retrying, stop_after_delay, wait_fixed

from receiver.app import EXTENSION
from tests.support.databases import libpq_url, with_database
from tests.support.receiver_support import clerk_headers, inbox_rows, payload_bytes


def _engine(app: Flask) -> Engine:
    return app.extensions[EXTENSION].engine


def _recording_backend_pid(settings) -> int:
    """The backend of the connection the receiver stores deliveries on: its recorder holds one
    (models/inbox.py, DeliveryRecorder). It ran the latest inbox INSERT: other connections whose
    last statement was one (the tests' own engine, stores in earlier tests) ran theirs before."""
    with psycopg.connect(libpq_url(settings.database_url.get_secret_value()), autocommit=True) as admin:
        found = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND query LIKE 'INSERT INTO %webhook_inbox%' ORDER BY query_start DESC LIMIT 1"
        ).fetchone()
    assert found is not None, "no connection ran the inbox INSERT"
    return int(found[0])


def _pooled_backend_pid(app: Flask) -> int:
    """The backend of the connection the pool will hand out next (the pool holds exactly one
    checked in: /readyz ran once, and every request so far ran one at a time)."""
    engine = _engine(app)
    assert engine.pool.checkedin() == 1
    with engine.connect() as connection:
        pid: int = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    return pid


def _terminate(settings, pid: int) -> None:
    with psycopg.connect(libpq_url(settings.database_url.get_secret_value()), autocommit=True) as admin:
        terminated = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        assert terminated == (True,)
        # Wait until the backend is really gone: the next statement must meet a dead socket.
        for attempt in Retrying(stop=stop_after_delay(10), wait=wait_fixed(0.01), reraise=True):
            with attempt:
                assert admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None


def _post_clerk(app: Flask):
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body)
    return headers["svix-id"], app.test_client().post("/webhooks/clerk", data=body, headers=headers)


@pytest.fixture
def warm_app(app: Flask) -> Flask:
    """A receiver that has stored one delivery (its recorder holds a connection) and answered
    /readyz once (its pool holds one more, checked in)."""
    _, response = _post_clerk(app)
    assert response.status_code == 200
    assert app.test_client().get("/readyz").status_code == 200
    return app


def test_a_delivery_on_a_dead_pooled_connection_is_stored_on_a_fresh_one(
    warm_app, receiver_settings, session_factory, queue
):
    dead_pid = _recording_backend_pid(receiver_settings)
    _terminate(receiver_settings, dead_pid)

    svix_id, response = _post_clerk(warm_app)

    assert response.status_code == 200
    assert response.get_json()["status"] == "accepted"
    row = next(row for row in inbox_rows(session_factory) if row.external_id == svix_id)
    assert response.get_json()["inbox_id"] == row.id
    assert [task.kwargs for task in queue()][-1] == {"inbox_id": row.id}
    assert _recording_backend_pid(receiver_settings) != dead_pid  # a new connection, not the dead one revived


def test_readiness_on_a_dead_pooled_connection_reconnects(warm_app, receiver_settings):
    _terminate(receiver_settings, _pooled_backend_pid(warm_app))

    response = warm_app.test_client().get("/readyz")

    assert response.status_code == 200, json.dumps(response.get_json())


@contextmanager
def _connections_refused(settings) -> Iterator[None]:
    """New connections to the test run's private database are refused (ALLOW_CONNECTIONS false
    binds superusers too); open ones keep working."""
    name = make_url(settings.database_url.get_secret_value()).database
    admin_url = libpq_url(with_database(settings.database_url.get_secret_value(), "postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        try:
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


def test_a_second_failure_is_an_outage_not_a_loop(warm_app, receiver_settings, caplog):
    """Retried once only: when the fresh connection is refused too, the delivery takes the
    PostgreSQL-down path (here Redis is not durable, so 503: the provider retries)."""
    _terminate(receiver_settings, _recording_backend_pid(receiver_settings))

    with _connections_refused(receiver_settings):
        _, response = _post_clerk(warm_app)

    assert response.status_code == 503
    assert response.get_json()["error"] == "unavailable"
    assert "webhook.database_unavailable" in caplog.text
