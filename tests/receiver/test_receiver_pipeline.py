"""Receiver and worker together: what the receiver enqueues (task names, kwargs) is what the
worker's tasks accept. These use the run's broker database and the real Celery worker."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from models.inbox import WebhookInbox
from tests.support.receiver_support import (
    asaas_headers,
    clerk_headers,
    down_database_url,
    inbox_rows,
    payload_bytes,
    receiver_apps,
)

pytestmark = pytest.mark.celery_worker

SETTLED = {"processed", "ignored", "unmatched", "failed"}


@pytest.fixture
def make_broker_app(settings, session_factory):
    with receiver_apps(settings) as make:
        yield make


def _settled_row(factory: sessionmaker[Session], external_id: str, timeout: float = 30) -> WebhookInbox:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [row for row in inbox_rows(factory) if row.external_id == external_id]
        if rows and rows[0].status in SETTLED:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(
        f"no settled inbox row for {external_id}: {[(r.external_id, r.status) for r in inbox_rows(factory)]}"
    )


def test_an_accepted_clerk_delivery_is_processed_by_the_worker(celery_worker, make_broker_app, session_factory):
    client = make_broker_app().test_client()
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body)

    response = client.post("/webhooks/clerk", data=body, headers=headers)

    assert response.json["status"] == "accepted"
    row = _settled_row(session_factory, headers["svix-id"])
    assert row.id == response.json["inbox_id"]
    assert row.status == "processed", (row.status, row.last_error, row.detail)


def test_a_delivery_queued_while_postgresql_was_down_is_stored_and_processed(
    celery_worker, make_broker_app, session_factory
):
    # The receiver could not reach PostgreSQL (its own URL points nowhere); the worker can. The
    # run's broker (the shared test Redis) does not persist: REDIS_DURABLE=yes stands in for a
    # production Redis here (test_receiver_durability.py checks the real settings).
    client = make_broker_app(database_url=down_database_url(), redis_durable="yes").test_client()
    body = payload_bytes("asaas/PAYMENT_CREATED")

    response = client.post("/webhooks/asaas", data=body, headers=asaas_headers())

    assert response.json == {"status": "queued"}
    row = _settled_row(session_factory, json.loads(body)["id"])
    assert (row.source, row.event_type) == ("asaas", "PAYMENT_CREATED")


def test_ten_concurrent_copies_of_one_delivery_have_one_effect(celery_worker, make_broker_app, session_factory):
    app = make_broker_app()
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body)

    def post(_):
        return app.test_client().post("/webhooks/clerk", data=body, headers=headers)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(post, range(10)))

    assert [r.status_code for r in responses] == [200] * 10
    assert sorted(r.json["status"] for r in responses) == ["accepted"] + ["duplicate"] * 9
    assert _settled_row(session_factory, headers["svix-id"]).status == "processed"
    with session_factory() as session:
        effects = session.execute(
            text(
                'SELECT (SELECT count(*) FROM ingest.webhook_inbox), (SELECT count(*) FROM "User"), '
                "(SELECT count(*) FROM ingest.credit_ledger)"
            )
        ).one()
    assert tuple(effects) == (1, 1, 1)


def test_the_sweep_recovers_a_delivery_whose_message_redis_lost(
    celery_worker, producer, receiver_settings, make_app, redis_client, session_factory
):
    # This receiver's broker (the scratch database) has no worker: flush it, as a Redis restart
    # without persistence would, and the stored row is all that is left.
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body)
    response = make_app().test_client().post("/webhooks/clerk", data=body, headers=headers)
    assert response.json["status"] == "accepted"
    redis_client.flushdb()
    with session_factory.begin() as session:  # older than the sweep threshold
        session.execute(update(WebhookInbox).values(enqueued_at=text("now() - interval '5 minutes'")))

    assert producer.send_task("inbox.sweep").get(timeout=30) == {"requeued": 1}
    assert _settled_row(session_factory, headers["svix-id"]).status == "processed"
