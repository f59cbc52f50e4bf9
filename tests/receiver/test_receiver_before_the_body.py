"""Slow or hostile clients: what the headers can decide is decided before a byte of the body is
read (the Asaas IP allow-list, the presence of the authentication headers, the Asaas token), and
a body that does not arrive in time is a 408 (under gunicorn: test_receiver_gunicorn.py)."""

from __future__ import annotations

import pytest

from tests.support.receiver_support import (
    CountingStream,
    asaas_headers,
    clerk_headers,
    inbox_rows,
    payload_bytes,
    post_raw,
)

CLERK_BODY = payload_bytes("clerk/user.created")
ASAAS_BODY = payload_bytes("asaas/PAYMENT_CONFIRMED")
ALLOWED = "52.67.12.206"


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
def test_a_clerk_request_without_svix_headers_is_401_before_reading(app, session_factory, missing):
    headers = {name: value for name, value in clerk_headers(CLERK_BODY).items() if name != missing}
    stream = CountingStream(CLERK_BODY)
    response = post_raw(app, "/webhooks/clerk", stream, headers, content_length=len(CLERK_BODY))
    assert (response.status, response.json["error"]) == (401, "missing_signature_headers")
    assert stream.bytes_read == 0
    assert inbox_rows(session_factory) == []


@pytest.mark.parametrize(
    "headers", [{"content-type": "application/json"}, asaas_headers("wrong-token")], ids=["no-token", "wrong-token"]
)
def test_an_asaas_request_without_the_right_token_is_401_before_reading(app, session_factory, headers):
    stream = CountingStream(ASAAS_BODY)
    response = post_raw(app, "/webhooks/asaas", stream, headers, content_length=len(ASAAS_BODY))
    expected = "bad_token" if "asaas-access-token" in headers else "missing_token"  # which check failed
    assert (response.status, response.json["error"]) == (401, expected)
    assert stream.bytes_read == 0


def test_an_asaas_request_from_outside_the_allow_list_is_403_before_reading(make_app, session_factory):
    app = make_app(asaas_allowed_ips=ALLOWED)
    stream = CountingStream(ASAAS_BODY)
    # post_raw's environ comes from the test's own address (127.0.0.1), which is not allowed.
    response = post_raw(app, "/webhooks/asaas", stream, asaas_headers(), content_length=len(ASAAS_BODY))
    assert (response.status, response.json["error"]) == (403, "forbidden_ip")
    assert stream.bytes_read == 0


def test_a_signed_clerk_request_is_read_and_accepted(app, session_factory):
    stream = CountingStream(CLERK_BODY)
    response = post_raw(app, "/webhooks/clerk", stream, clerk_headers(CLERK_BODY), content_length=len(CLERK_BODY))
    assert response.status == 200 and stream.bytes_read == len(CLERK_BODY)
