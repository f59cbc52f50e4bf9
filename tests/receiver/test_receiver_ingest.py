"""Body size limit, and what the receiver answers when PostgreSQL and/or Redis are down:
200 only for a delivery that is stored (PostgreSQL) or queued (Redis), 503 otherwise."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable

import pytest

from messaging.fallback_store import STREAM as FALLBACK_STREAM
from messaging.ingest_message import IngestSigner
from tests.conftest import INGEST_TEST_KEY
from tests.support.receiver_support import (
    CountingStream,
    asaas_headers,
    clerk_headers,
    down_database_url,
    down_redis_url,
    fallback_entries,
    inbox_rows,
    json_body,
    payload_bytes,
    post_raw,
    queued_tasks,
)

LIMIT = 2048


def _clerk(body: bytes) -> tuple[str, dict[str, str]]:
    return "/webhooks/clerk", clerk_headers(body)


def _asaas(body: bytes) -> tuple[str, dict[str, str]]:
    return "/webhooks/asaas", asaas_headers()


SOURCES: dict[str, Callable[[bytes], tuple[str, dict[str, str]]]] = {"clerk": _clerk, "asaas": _asaas}


def _event(source: str, size: int) -> bytes:
    """A valid delivery body of exactly `size` bytes."""
    base = (
        {"type": "user.created", "data": {}} if source == "clerk" else {"id": "evt_pad&1", "event": "PAYMENT_CREATED"}
    )
    padding = size - len(json_body({**base, "pad": ""}))
    body = json_body({**base, "pad": "x" * padding})
    assert len(body) == size
    return body


@pytest.fixture
def small_app(make_app):
    return make_app(max_body_bytes=LIMIT)


@pytest.mark.parametrize("source", SOURCES)
class TestBodySizeLimit:
    def test_a_body_at_the_limit_is_accepted(self, small_app, session_factory, source):
        body = _event(source, LIMIT)
        path, headers = SOURCES[source](body)
        response = small_app.test_client().post(path, data=body, headers=headers)
        assert response.status_code == 200, response.json

    def test_a_larger_content_length_is_refused_before_any_byte_is_read(
        self, small_app, session_factory, queue, source
    ):
        body = _event(source, LIMIT + 1)
        path, headers = SOURCES[source](body)
        stream = CountingStream(body)

        response = post_raw(small_app, path, stream, headers, content_length=len(body))

        assert response.status == 413
        assert response.json["error"] == "too_large"
        assert stream.bytes_read == 0
        assert inbox_rows(session_factory) == [] and queue() == []

    def test_a_chunked_body_is_read_up_to_the_limit_only(self, small_app, session_factory, queue, source):
        body = _event(source, LIMIT * 50)
        path, headers = SOURCES[source](body)
        stream = CountingStream(body)

        response = post_raw(small_app, path, stream, headers)  # no Content-Length

        assert response.status == 413
        assert response.json["error"] == "too_large"
        assert stream.bytes_read == LIMIT + 1
        assert inbox_rows(session_factory) == [] and queue() == []

    def test_a_chunked_body_within_the_limit_is_accepted(self, small_app, session_factory, source):
        body = _event(source, LIMIT)
        path, headers = SOURCES[source](body)
        response = post_raw(small_app, path, CountingStream(body), headers)
        assert response.status == 200
        assert response.json["status"] == "accepted"

    def test_the_limit_comes_before_authentication(self, small_app, session_factory, source):
        # An oversized body is never buffered, even just to check its signature.
        body = _event(source, LIMIT + 1)
        response = small_app.test_client().post(f"/webhooks/{source}", data=body)
        assert response.status_code == 413


def test_a_body_shorter_than_its_content_length_is_a_400(app, session_factory, queue):
    body = payload_bytes("asaas/PAYMENT_CREATED")
    response = post_raw(app, "/webhooks/asaas", CountingStream(body), asaas_headers(), content_length=len(body) + 10)
    assert response.status == 400
    assert inbox_rows(session_factory) == [] and queue() == []


def _signed_delivery(client) -> dict:
    """The one delivery in the fallback store, opened as a worker opens it (signature checked)."""
    [entry] = fallback_entries(client)
    assert set(entry) == {"delivery_id", "service", "request", "signature"}, entry
    return IngestSigner([INGEST_TEST_KEY]).open_entry(entry)


class TestPostgresqlDown:
    """With a durable Redis (see test_receiver_durability.py for one that is not)."""

    @pytest.fixture
    def down_app(self, make_app, durable_redis_url):
        return make_app(database_url=down_database_url(), redis_url=durable_redis_url)

    def test_a_clerk_delivery_is_queued_for_ingestion(self, down_app, session_factory, durable_redis):
        body = payload_bytes("clerk/user.created")
        headers = clerk_headers(body)

        response = down_app.test_client().post("/webhooks/clerk", data=body, headers=headers)

        assert response.status_code == 200
        assert response.json == {"status": "queued"}
        # The drain stores it first (deduplicated on the same key), then processes it: the
        # entry carries everything the inbox row would have, signed.
        assert _signed_delivery(durable_redis) == {
            "source": "clerk",
            "external_id": headers["svix-id"],
            "event_type": "user.created",
            "payload": json.loads(body),
        }
        assert inbox_rows(session_factory) == []
        assert queued_tasks(durable_redis) == []  # nothing on `webhooks`: no Celery message holds it

    def test_an_asaas_delivery_is_queued_for_ingestion(self, down_app, session_factory, durable_redis):
        body = payload_bytes("asaas/PAYMENT_CONFIRMED")
        response = down_app.test_client().post("/webhooks/asaas", data=body, headers=asaas_headers())
        assert response.status_code == 200
        assert response.json == {"status": "queued"}
        assert _signed_delivery(durable_redis)["external_id"] == "evt_05b708f961d739ea7eba7e4db318f621&368604919"

    def test_the_store_keeps_every_entry_with_no_expiry_and_no_trim(self, down_app, session_factory, durable_redis):
        """Nothing but a drain that committed removes an entry: no TTL, no MAXLEN/MINID on XADD
        (a trim drops the oldest deliveries, answered 200, once the stream is long enough)."""
        filler = {f"{n}-1": {"filler": "x"} for n in range(1, 2001)}
        pipeline = durable_redis.pipeline(transaction=False)
        for entry_id, fields in filler.items():
            pipeline.xadd(FALLBACK_STREAM, fields, id=entry_id)
        pipeline.execute()
        body = payload_bytes("asaas/PAYMENT_CONFIRMED")
        with durable_redis.monitor() as monitor:
            assert down_app.test_client().post("/webhooks/asaas", data=body, headers=asaas_headers()).status_code == 200
            xadd = next(command["command"] for command in monitor.listen() if command["command"].startswith("XADD"))
        assert xadd.split()[:2] == ["XADD", FALLBACK_STREAM] and not {"MAXLEN", "MINID"} & set(xadd.upper().split())
        assert durable_redis.ttl(FALLBACK_STREAM) == -1
        assert durable_redis.xlen(FALLBACK_STREAM) == len(filler) + 1
        assert durable_redis.xrange(FALLBACK_STREAM, count=1)[0][0] == b"1-1"

    def test_the_workers_are_nudged_once_per_drain_interval(self, down_app, session_factory, durable_redis):
        client = down_app.test_client()
        for _ in range(3):
            body = payload_bytes("asaas/PAYMENT_CONFIRMED")
            assert client.post("/webhooks/asaas", data=body, headers=asaas_headers()).status_code == 200
        assert [task.task for task in queued_tasks(durable_redis, "maintenance")] == ["inbox.drain_fallback"]
        assert durable_redis.xlen(FALLBACK_STREAM) == 3

    def test_an_unauthenticated_delivery_is_not_queued(self, down_app, session_factory, durable_redis):
        body = payload_bytes("asaas/PAYMENT_CONFIRMED")
        assert (
            down_app.test_client().post("/webhooks/asaas", data=body, headers=asaas_headers("wrong")).status_code == 401
        )
        assert queued_tasks(durable_redis) == [] and fallback_entries(durable_redis) == []


class TestRedisDown:
    def test_a_stored_delivery_is_still_a_200_left_for_the_sweep(self, make_app, session_factory, caplog):
        client = make_app(redis_url=down_redis_url()).test_client()
        body = payload_bytes("clerk/user.created")

        with caplog.at_level(logging.WARNING, logger="receiver"):
            response = client.post("/webhooks/clerk", data=body, headers=clerk_headers(body))

        [row] = inbox_rows(session_factory)
        assert response.status_code == 200
        assert response.json == {"status": "accepted", "inbox_id": row.id}
        assert row.status == "pending"  # `inbox.sweep` re-enqueues it
        assert "webhook.enqueue_failed" in caplog.text


class TestBothDown:
    def test_an_authenticated_delivery_is_a_503_so_the_provider_retries(self, make_app, session_factory, queue):
        client = make_app(database_url=down_database_url(), redis_url=down_redis_url()).test_client()
        body = payload_bytes("clerk/user.created")

        response = client.post("/webhooks/clerk", data=body, headers=clerk_headers(body))

        assert response.status_code == 503
        assert response.json["error"] == "unavailable"
        assert queue() == [] and inbox_rows(session_factory) == []

    def test_a_redis_that_hangs_fails_fast(self, make_app, session_factory):
        # A server that accepts connections and never answers: only timeouts end the wait.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            port = silent.getsockname()[1]
            client = make_app(database_url=down_database_url(), redis_url=f"redis://127.0.0.1:{port}/0").test_client()
            body = payload_bytes("asaas/PAYMENT_CONFIRMED")

            started = time.monotonic()
            response = client.post("/webhooks/asaas", data=body, headers=asaas_headers())
            elapsed = time.monotonic() - started

        assert response.status_code == 503
        assert elapsed < 10, f"took {elapsed:.1f}s: providers and gunicorn's timeout would give up"
