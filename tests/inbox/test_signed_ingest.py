"""Nothing on the broker can mint credits: `webhooks.ingest` (kept for messages an older receiver
queued) stores only a delivery the receiver signed (INGEST_SIGNING_KEY). Anyone else holding
REDIS_URL who enqueues it by name, with a forged PAYMENT_CONFIRMED, gets no inbox row and no
credit. (The fallback store's forged entries: tests/inbox/test_fallback_drain.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from messaging.celery_config import DRAIN_FALLBACK_TASK
from messaging.ingest_message import IngestSigner
from tests.conftest import INGEST_TEST_KEY
from tests.support.billing import PRO_CREDITS, SIGNUP, add_pro_plan, add_user, asaas_event, balance
from tests.support.receiver_support import asaas_headers, down_database_url, inbox_rows, json_body, receiver_apps
from tests.support.servers import PROJECT_ROOT

pytestmark = pytest.mark.celery_worker

FORGED = asaas_event("PAYMENT_CONFIRMED", event_id="evt_forged&1", id="pay_forged")
DELIVERY = {"source": "asaas", "external_id": FORGED["id"], "event_type": "PAYMENT_CONFIRMED", "payload": FORGED}


def _asaas_rows(session_factory):
    return [row for row in inbox_rows(session_factory) if row.source == "asaas"]


@pytest.fixture
def paying_user(session_factory):
    add_pro_plan(session_factory)
    add_user(session_factory)


TASK_ID = "7d2c3f5e-0000-4000-8000-00000000f00d"
GENUINE = IngestSigner([INGEST_TEST_KEY]).message(TASK_ID, DELIVERY)


@pytest.mark.parametrize(
    "kwargs",
    [
        DELIVERY,  # the message as it was before it was signed
        IngestSigner(["a key the receiver does not hold"]).message(TASK_ID, DELIVERY),
        {**GENUINE, "signature": GENUINE["signature"][:-2] + "xx"},
        {"service": "receiver", "request": json.dumps(DELIVERY)},
        {**GENUINE, "payload": FORGED},
        {**GENUINE, "request": GENUINE["request"].replace("PAYMENT_CONFIRMED", "PAYMENT_RECEIVED")},
        IngestSigner([INGEST_TEST_KEY]).message("another task id", DELIVERY),  # replayed under TASK_ID
    ],
    ids=["unsigned", "other-key", "tampered-signature", "no-signature", "extra-fields", "tampered-request", "replayed"],
)
def test_a_forged_ingest_message_stores_nothing_and_grants_nothing(
    celery_worker, producer, session_factory, paying_user, kwargs
):
    answer = producer.send_task("webhooks.ingest", kwargs=kwargs, task_id=TASK_ID).get(timeout=30)
    assert answer == {"status": "refused"}
    assert _asaas_rows(session_factory) == []
    assert balance(session_factory) == SIGNUP


def test_a_delivery_the_receiver_signed_is_stored_and_processed(
    celery_worker, producer, settings, session_factory, paying_user
):
    """The receiver's own code path: PostgreSQL unreachable from the receiver, so it queues the
    delivery, signed, in the fallback store for the worker (which reaches PostgreSQL) to store
    and apply."""
    body = json_body(FORGED)  # the same delivery, this time authenticated by the receiver
    with receiver_apps(settings) as make_app:
        # The run's broker is the shared test Redis (no persistence): the operator's override.
        app = make_app(database_url=down_database_url(), redis_durable="yes")
        response = app.test_client().post("/webhooks/asaas", data=body, headers=asaas_headers())
    assert response.json == {"status": "queued"}
    # Drained now, whether or not this delivery's nudge went out (one per drain interval).
    producer.send_task(DRAIN_FALLBACK_TASK).get(timeout=30)
    deadline = time.monotonic() + 30
    while not (rows := _asaas_rows(session_factory)) or rows[0].status == "pending":
        assert time.monotonic() < deadline, "the queued delivery was not stored and processed in time"
        time.sleep(0.1)
    assert [(row.external_id, row.status) for row in rows] == [("evt_forged&1", "processed")]
    assert balance(session_factory) == SIGNUP + PRO_CREDITS


def test_keys_rotate_newest_first():
    old, new = IngestSigner(["old-key"]), IngestSigner(["new-key", "old-key"])
    # During a rotation both are accepted; the first key signs.
    assert new.open(TASK_ID, old.message(TASK_ID, DELIVERY)) == DELIVERY
    assert IngestSigner(["new-key"]).open(TASK_ID, new.message(TASK_ID, DELIVERY)) == DELIVERY


def test_a_worker_without_the_key_does_not_start(settings):
    env = {
        "PATH": f"{sys.executable.rsplit('/', 1)[0]}:/usr/bin:/bin",
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "REDIS_URL": settings.redis_url.get_secret_value(),
    }
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo", "--queues=nothing"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "INGEST_SIGNING_KEY is not set" in result.stderr
