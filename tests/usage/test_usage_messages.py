"""What the usage messages and their answers carry on the wire (docs/usage-api.md): a debit's or
a hold's message `expires` at its caller's deadline (`wait` from sending), requests that record
what already happened carry no expiry, and every answer is kept 24 h in Redis, batched or not."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime

import pytest
import redis

from messaging.celery_config import USAGE_QUEUE
from tests.support.usage import credits_client, make_user

DAY = 24 * 3600
# An answer read back at once has lost at most this much of its 24 h (a loaded machine's delay).
READ_BACK_SLACK = 600


@pytest.fixture
def offline_client(redis_urls, redis_client):
    """A client on a broker no worker reads: its messages stay in the `usage` list."""
    client = credits_client(redis_urls["scratch"])
    yield client
    client.close()


def _queued(redis_client: redis.Redis) -> list[dict]:
    """The messages waiting in the `usage` queue, oldest first: kombu's envelope, body decoded."""
    envelopes = [json.loads(raw) for raw in reversed(redis_client.lrange(USAGE_QUEUE, 0, -1))]
    for envelope in envelopes:
        envelope["decoded"] = json.loads(base64.b64decode(envelope["body"]))
    return envelopes


def _request_of(message: dict) -> dict:
    _args, kwargs, _embed = message["decoded"]
    return json.loads(kwargs["request"])


@pytest.mark.parametrize("wait", [0.5, 30.0, 600.0])
def test_a_debit_and_a_hold_expire_at_their_callers_deadline(offline_client, redis_client, wait):
    before = time.time()
    offline_client.send_debit("user_a", "AI_TEXT_CHAT", "d-1", cost=1, wait=wait)
    offline_client.send_hold("user_a", "AI_TEXT_CHAT", "h-1", credits=5, wait=wait)
    after = time.time()
    messages = _queued(redis_client)
    assert [message["headers"]["task"] for message in messages] == ["usage.debit", "usage.hold"]
    for message in messages:
        expires = message["headers"]["expires"]
        assert expires is not None, f"{message['headers']['task']} was sent without `expires`"
        expires_at = datetime.fromisoformat(expires).timestamp()
        assert before + wait <= expires_at <= after + wait
        # The message dies when the request's own deadline passes, not a moment earlier or later.
        assert expires_at == pytest.approx(_request_of(message)["not_after"], abs=1e-3)


def test_requests_that_record_what_happened_never_expire(offline_client, redis_client):
    """A refund, a capture, a release and a storage record are never dropped unrun for being late."""
    offline_client.send_refund("user_a", "r-1", refund_of="d-1")
    offline_client.send_capture("h-1", credits=3)
    offline_client.send_release("h-2")
    offline_client.send_record_storage("user_a", "https://blob/x", "x", "x.png", 10)
    offline_client.send_delete_storage(pathname="x")
    messages = _queued(redis_client)
    assert len(messages) == 5
    assert [message["headers"]["expires"] for message in messages] == [None] * 5


@pytest.mark.celery_worker
def test_every_answer_is_kept_24_hours(celery_worker, producer, session_factory, redis_urls):
    """A debit's answer (stored with its batch's) and a refund's (a task's own result) are kept
    as long as a caller may come back for them: 24 h, not merely "some time"."""
    make_user(session_factory)
    client = credits_client(redis_urls["broker"])
    try:
        debit = client.send_debit("user_a", "AI_TEXT_CHAT", "ttl-d", cost=3)
        assert debit.answer()["status"] == "applied"
        refund = client.send_refund("user_a", "ttl-r", refund_of="ttl-d")
        assert refund.answer()["status"] == "applied"
    finally:
        client.close()
    backend = producer.backend
    for pending in (debit, refund):
        ttl = backend.client.ttl(backend.get_key_for_task(pending.task_id))
        assert DAY - READ_BACK_SLACK <= ttl <= DAY, (pending.task, ttl)
