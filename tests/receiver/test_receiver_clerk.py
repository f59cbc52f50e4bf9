"""POST /webhooks/clerk: Svix verification on the raw bytes, then one inbox row and one
`webhooks.process` message per Svix message id."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CLERK_TEST_SECRET
from tests.support.receiver_support import (
    QueuedTask,
    clerk_headers,
    inbox_rows,
    json_body,
    new_msg_id,
    payload_bytes,
    payload_names,
    stale,
)

OTHER_SECRET = "whsec_" + "b3RoZXItc2VjcmV0LWZvci1yb3RhdGlvbi10ZXN0cw=="
URL = "/webhooks/clerk"


def _post(client, body: bytes, headers: dict[str, str]):
    return client.post(URL, data=body, headers=headers)


def _assert_nothing_stored(session_factory, queue) -> None:
    assert inbox_rows(session_factory) == []
    assert queue() == []


def test_a_signed_delivery_is_stored_once_and_enqueued(client, session_factory, queue):
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body)

    response = _post(client, body, headers)

    [row] = inbox_rows(session_factory)
    assert response.status_code == 200
    assert response.json == {"status": "accepted", "inbox_id": row.id}
    # Written as Flask's jsonify writes it: compact, keys sorted, a final newline.
    assert response.content_type == "application/json"
    assert response.get_data() == b'{"inbox_id":%d,"status":"accepted"}\n' % row.id
    assert (row.source, row.external_id, row.event_type, row.status) == (
        "clerk",
        headers["svix-id"],
        "user.created",
        "pending",
    )
    assert row.payload == json.loads(body)
    assert queue() == [QueuedTask("webhooks.process", [], {"inbox_id": row.id})]


@pytest.mark.parametrize("name", payload_names("clerk"))
def test_every_documented_clerk_event_is_accepted(client, session_factory, name):
    body = payload_bytes(name)
    response = _post(client, body, clerk_headers(body))
    assert response.status_code == 200, response.json
    [row] = inbox_rows(session_factory)
    assert row.event_type == json.loads(body)["type"]


def test_the_same_delivery_twice_is_a_duplicate_stored_and_enqueued_once(client, session_factory, queue):
    body = payload_bytes("clerk/user.updated")
    headers = clerk_headers(body)

    first = _post(client, body, headers)
    second = _post(client, body, headers)

    assert first.status_code == 200 and first.json["status"] == "accepted"
    # Exactly 200 for the duplicate too: the provider must stop retrying it.
    assert second.status_code == 200
    assert second.json == {"status": "duplicate"}
    assert len(inbox_rows(session_factory)) == 1
    assert [task.task for task in queue()] == ["webhooks.process"]


def test_the_svix_id_is_the_deduplication_key(client, session_factory):
    # A re-sent message keeps its svix-id (new timestamp and signature); another message with
    # an identical body has a new svix-id and is a new delivery.
    body = payload_bytes("clerk/user.updated")
    msg_id = new_msg_id()
    assert _post(client, body, clerk_headers(body, msg_id=msg_id)).json["status"] == "accepted"
    assert _post(client, body, clerk_headers(body, msg_id=msg_id, timestamp=stale(2))).json == {"status": "duplicate"}
    assert _post(client, body, clerk_headers(body)).json["status"] == "accepted"
    assert len(inbox_rows(session_factory)) == 2


@pytest.mark.parametrize("signing_secret", [OTHER_SECRET, CLERK_TEST_SECRET])
def test_every_secret_of_a_rotation_is_accepted(make_app, session_factory, signing_secret):
    client = make_app(clerk_webhook_signing_secret=f"{OTHER_SECRET}, {CLERK_TEST_SECRET}").test_client()
    body = payload_bytes("clerk/user.created")
    response = _post(client, body, clerk_headers(body, secret=signing_secret))
    assert response.status_code == 200
    assert response.json["status"] == "accepted"


def test_a_secret_outside_the_rotation_is_refused(client, session_factory, queue):
    body = payload_bytes("clerk/user.created")
    response = _post(client, body, clerk_headers(body, secret=OTHER_SECRET))
    assert response.status_code == 401
    assert response.json["error"] == "bad_signature"
    _assert_nothing_stored(session_factory, queue)


def test_a_body_changed_after_signing_is_refused(client, session_factory, queue):
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body)
    tampered = body.replace(b"example@example.org", b"attacker@example.org")
    assert _post(client, tampered, headers).status_code == 401
    _assert_nothing_stored(session_factory, queue)


@pytest.mark.parametrize("minutes", [10, -10], ids=["10 minutes old", "10 minutes ahead"])
def test_a_validly_signed_delivery_outside_the_timestamp_tolerance_says_so(client, session_factory, queue, minutes):
    """The signature is right; the timestamp is what fails, and the answer names that check."""
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body, timestamp=stale(minutes))
    response = _post(client, body, headers)
    assert response.status_code == 401
    assert response.json["error"] == "timestamp_out_of_tolerance"
    assert "5 minutes" in response.json["detail"]
    text = response.get_data(as_text=True)
    assert headers["svix-signature"] not in text and CLERK_TEST_SECRET not in text
    _assert_nothing_stored(session_factory, queue)


def test_a_stale_delivery_signed_with_another_secret_still_says_timestamp(client, session_factory, queue):
    # svix checks the timestamp before any signature: the first thing to fix is the clock/replay.
    body = payload_bytes("clerk/user.created")
    response = _post(client, body, clerk_headers(body, secret=OTHER_SECRET, timestamp=stale(10)))
    assert response.json["error"] == "timestamp_out_of_tolerance"


def test_a_fresh_delivery_with_a_wrong_signature_says_signature(client, session_factory, queue):
    body = payload_bytes("clerk/user.created")
    response = _post(client, body, clerk_headers(body, secret=OTHER_SECRET))
    assert (response.status_code, response.json["error"]) == (401, "bad_signature")
    assert "svix-signature" in response.json["detail"]


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
def test_a_missing_svix_header_is_refused(client, session_factory, queue, missing):
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body)
    del headers[missing]
    response = _post(client, body, headers)
    assert response.status_code == 401
    assert response.json["error"] == "missing_signature_headers"
    _assert_nothing_stored(session_factory, queue)


@pytest.mark.parametrize(
    "signature",
    [
        "",
        " ",
        "v1",
        "v1,",
        "v1,not base64!!",
        "v1,abc",  # bad padding: binascii.Error inside svix
        "v1,é",  # non-ASCII: ValueError inside svix
        "v1,\xff\xfe\x00",
        "v1,a,b",
        "v1,abc v1",
        "v2,c2lnbmF0dXJl",
        "\u20ac",
    ],
)
def test_a_garbage_signature_header_is_a_401_not_a_500(client, session_factory, queue, signature):
    body = payload_bytes("clerk/user.created")
    headers = {**clerk_headers(body), "svix-signature": signature}
    response = _post(client, body, headers)
    assert response.status_code == 401
    assert response.json["error"] == ("bad_signature" if signature else "missing_signature_headers")
    _assert_nothing_stored(session_factory, queue)


@pytest.mark.parametrize("timestamp", ["abc", "nan", "inf", "-inf", "1e999", "-1", "é", "\x00", "99999999999999999999"])
def test_a_garbage_timestamp_header_is_a_401(client, session_factory, queue, timestamp):
    body = payload_bytes("clerk/user.created")
    headers = {**clerk_headers(body), "svix-timestamp": timestamp}
    assert _post(client, body, headers).status_code == 401
    _assert_nothing_stored(session_factory, queue)


def test_a_body_that_is_not_utf8_cannot_be_authenticated(client, session_factory, queue):
    # Svix signs text: bytes that do not decode cannot carry a valid signature.
    body = b'{"type": "user.created", "data": {"name": "\xff\xfe"}}'
    headers = clerk_headers(body.decode("latin-1"))
    assert _post(client, body, headers).status_code == 401
    _assert_nothing_stored(session_factory, queue)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "malformed"),
        (b"", "malformed"),
        (b"[]", "malformed"),
        (b'"user.created"', "malformed"),
        (b"42", "malformed"),
        (b"null", "malformed"),
        (b'{"type": "user.created", "data": NaN}', "malformed"),
        (b'{"type": "user.created", "data": 1e400}', "malformed"),
        (b'{"type": "user.created", "data": "\\u0000"}', "malformed"),
        (b'{"type": "user.created", "data": {"\\u0000": 1}}', "malformed"),
        (b'{"type": "user.created", "data": "\\ud800"}', "malformed"),
        (b'{"type": "user.created", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed"),
        (b'\xef\xbb\xbf{"type": "user.created", "data": {}}', "malformed"),  # a BOM
        (b'{"data": {}}', "missing_type"),
        (b'{"type": "", "data": {}}', "missing_type"),
        (b'{"type": "   ", "data": {}}', "missing_type"),
        (b'{"type": 7, "data": {}}', "missing_type"),
        (b'{"type": ["user.created"], "data": {}}', "missing_type"),
        (b'{"type": "user\\u0000created", "data": {}}', "malformed"),
    ],
)
def test_a_signed_body_that_is_not_a_storable_event_is_a_400(client, session_factory, queue, body, error):
    response = _post(client, body, clerk_headers(body))
    assert response.status_code == 400
    assert response.json["error"] == error
    _assert_nothing_stored(session_factory, queue)


def test_a_svix_id_postgresql_cannot_store_is_a_400(client, session_factory, queue):
    body = json_body({"type": "user.created", "data": {}})
    response = _post(client, body, clerk_headers(body, msg_id="msg_\x00"))
    assert response.status_code == 400
    assert response.json["error"] == "missing_id"
    _assert_nothing_stored(session_factory, queue)


def test_unicode_is_stored_as_sent(client, session_factory):
    body = json.dumps(
        {"type": "user.created", "data": {"first_name": "João 🎉", "n": 12345678901234567890}}, ensure_ascii=False
    ).encode()
    assert _post(client, body, clerk_headers(body)).status_code == 200
    [row] = inbox_rows(session_factory)
    assert row.payload["data"] == {"first_name": "João 🎉", "n": 12345678901234567890}
