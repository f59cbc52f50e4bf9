"""Nobody with the Redis URL alone can spend, refund or record: every usage message is signed by
its service, every answer by the worker (worker/usage/messages.py). A message that does not verify
writes nothing and gets no answer; a refund from another service is refused; an answer someone
else wrote into the result backend is never taken for the worker's."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis
from pedro_credits.client import Pending
from sqlalchemy import select

from messaging.celery_config import REFUSED_USAGE_MESSAGES
from messaging.signing import REQUEST, signature
from models.app import StorageObject, UsageHistory
from models.usage import UsageRequest
from tests.conftest import USAGE_TEST_KEYS
from tests.support.usage import balance, count_rows, credits_client, make_user, stored_status

pytestmark = pytest.mark.celery_worker

DEBIT = {"clerk_user_id": "user_a", "operation": "AI_TEXT_CHAT", "idempotency_key": "forged-1", "cost": 40}


@pytest.fixture
def broker(producer):
    client = redis.Redis.from_url(producer.conf.broker_url)
    yield client
    client.close()


def _signed(task: str, task_id: str, args: dict[str, Any], service: str = "tests", key: str | None = None) -> dict:
    text = json.dumps(args)
    signed = signature(key or USAGE_TEST_KEYS[service], REQUEST, service, task, task_id, text)
    return {"service": service, "request": text, "signature": signed}


def _refused_count(broker: redis.Redis) -> int:
    return sum(int(count) for count in broker.hvals(REFUSED_USAGE_MESSAGES))


def _send_and_wait_for_the_refusal(producer, broker, task: str, kwargs: dict, task_id: str) -> None:
    before = _refused_count(broker)
    producer.send_task(task, kwargs=kwargs, task_id=task_id, ignore_result=True)
    deadline = time.monotonic() + 30
    while _refused_count(broker) == before:
        assert time.monotonic() < deadline, f"the worker did not refuse {task} {kwargs}"
        time.sleep(0.05)


TASK_ID = "2f6b0a7e-0000-4000-8000-0000000f0a6e"
GENUINE = _signed("usage.debit", TASK_ID, DEBIT)
FORGED_DEBITS = {
    "unsigned": DEBIT,
    "unknown-key": _signed("usage.debit", TASK_ID, DEBIT, key="a key no service holds"),
    "unknown-service": {**GENUINE, "service": "mallory"},
    "other-services-name": _signed("usage.debit", TASK_ID, DEBIT, service="other", key=USAGE_TEST_KEYS["tests"]),
    "tampered-request": {**GENUINE, "request": GENUINE["request"].replace('"cost": 40', '"cost": 0')},
    "replayed-under-another-id": _signed("usage.debit", "another task id", DEBIT),
    "signed-for-another-task": _signed("usage.refund", TASK_ID, DEBIT),
    "no-signature": {"service": "tests", "request": GENUINE["request"]},
}


@pytest.mark.parametrize("kwargs", FORGED_DEBITS.values(), ids=FORGED_DEBITS.keys())
def test_a_forged_debit_writes_nothing_and_gets_no_answer(celery_worker, producer, broker, session_factory, kwargs):
    make_user(session_factory)
    _send_and_wait_for_the_refusal(producer, broker, "usage.debit", kwargs, TASK_ID)
    assert stored_status(session_factory, "forged-1") is None
    assert balance(session_factory) == 100 and count_rows(session_factory, UsageHistory) == 0
    assert broker.get(f"celery-task-meta-{TASK_ID}") is None


def test_forged_refunds_and_storage_records_write_nothing(client, producer, broker, session_factory):
    make_user(session_factory)
    assert client.debit("user_a", "AI_TEXT_CHAT", "paid-1", cost=30)["remaining"] == 70
    refund = {"clerk_user_id": "user_a", "idempotency_key": "refund-1", "refund_of": "paid-1"}
    upload = {"clerk_user_id": "user_a", "url": "https://b/x", "pathname": "u/x", "name": "x", "size": 1}
    for task, args in (("usage.refund", refund), ("storage.record", upload), ("storage.delete", {"pathname": "u/x"})):
        task_id = str(uuid.uuid4())
        _send_and_wait_for_the_refusal(producer, broker, task, args, task_id)  # unsigned
        forged = _signed(task, task_id, args, key="not the service's key")
        _send_and_wait_for_the_refusal(producer, broker, task, forged, str(uuid.uuid4()))
    assert balance(session_factory) == 70 and stored_status(session_factory, "refund-1") is None
    assert count_rows(session_factory, StorageObject) == 0


def test_a_refund_is_accepted_only_from_the_service_that_debited(client, producer, session_factory):
    make_user(session_factory)
    assert client.debit("user_a", "AI_TEXT_CHAT", "by-tests", cost=30)["status"] == "applied"
    other = credits_client(producer.conf.broker_url, service="other")
    try:
        refused = other.refund("user_a", "refund-by-other", refund_of="by-tests")
        assert refused["status"] == "unknown_debit"
        assert other.outcome("by-tests")["status"] == "unknown"  # nor may it read the debit's answer
    finally:
        other.close()
    assert balance(session_factory) == 70
    assert client.refund("user_a", "refund-by-tests", refund_of="by-tests")["status"] == "applied"
    assert balance(session_factory) == 100


def test_the_refused_messages_are_counted_by_the_service_they_named(producer, broker, celery_worker):
    before = int(broker.hget(REFUSED_USAGE_MESSAGES, "mallory") or 0)
    _send_and_wait_for_the_refusal(producer, broker, "usage.debit", FORGED_DEBITS["unknown-service"], TASK_ID)
    assert int(broker.hget(REFUSED_USAGE_MESSAGES, "mallory") or 0) == before + 1


def _forge_answer(broker: redis.Redis, task_id: str, answer: dict) -> None:
    """What someone with the Redis URL can write: a SUCCESS meta in Celery's own format,
    published on the key's channel too, with a made-up signature."""
    result = {"service": "tests", "answer": json.dumps(answer), "signature": "forged"}
    meta = json.dumps({"status": "SUCCESS", "result": result, "task_id": task_id, "traceback": None, "children": []})
    key = f"celery-task-meta-{task_id}"
    broker.set(key, meta)
    broker.publish(key, meta)


def test_an_answer_forged_into_the_result_backend_is_never_returned(client, broker, session_factory):
    """While the debit waits for its balance row, someone writes `applied` with a big balance
    for its task id: the client ignores it, and the worker's own answer replaces it."""
    from tests.usage.test_usage_batches import balance_locked, wait_until_a_debit_waits_for_a_lock

    make_user(session_factory)
    with balance_locked(session_factory, "user_a"):
        pending = client.send_debit("user_a", "AI_TEXT_CHAT", "real-1", cost=10)
        wait_until_a_debit_waits_for_a_lock(session_factory)
        _forge_answer(broker, pending.task_id, {"status": "applied", "remaining": 1_000_000, "usage_id": "x"})
        assert client.wait_for_answer(pending.task, pending.task_id, time.monotonic() + 1) is None
    answer = pending.answer()
    assert answer["status"] == "applied" and answer["remaining"] == 90
    with session_factory() as session:
        usage_id = session.scalar(select(UsageRequest.usage_id).where(UsageRequest.idempotency_key == "real-1"))
    assert answer["usage_id"] == usage_id


def test_a_forged_answer_with_no_worker_answer_is_settled_not_believed(client, broker, session_factory):
    """A debit whose message never reached a worker (lost with a Redis restart, say), and a
    forged `applied` in its result key: the caller's final answer is what PostgreSQL holds."""
    make_user(session_factory)
    task_id, not_after = str(uuid.uuid4()), time.time() + 1
    fields = _signed("usage.debit", task_id, {**DEBIT, "idempotency_key": "never-ran", "not_after": not_after})
    lost = Pending(client, "usage.debit", task_id, fields, not_after, wait=1)  # as if sent, but never queued
    _forge_answer(broker, task_id, {"status": "applied", "remaining": 60, "usage_id": "x"})
    assert lost.answer() == {"status": "expired", "remaining": None, "usage_id": None}
    assert balance(session_factory) == 100 and stored_status(session_factory, "never-ran") == "expired"
