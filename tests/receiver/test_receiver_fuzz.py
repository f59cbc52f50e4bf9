"""Property tests: whatever bytes arrive, the webhook endpoints answer with a deliberate status
(200, 400, 401, 403, 413) and a JSON body, never a 500; and a 200 to an authenticated body
means the inbox holds it."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, event, given, reject
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Text, cast, literal, select
from sqlalchemy.dialects.postgresql import JSONB

from models.inbox import WebhookInbox
from tests.conftest import ASAAS_TEST_TOKEN
from tests.support.receiver_support import clerk_headers

DELIBERATE = {200, 400, 401, 403, 413}
LIMIT = 4096

# Function-scoped fixtures (one app, tables emptied once after the test) are shared by every
# example on purpose: each example is an independent request to the same running receiver.
FUZZ = hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# What a WSGI server can hand over as a header value: any byte but CR/LF, latin-1-decoded;
# plus arbitrary text, which only an in-process caller could send.
header_values = st.one_of(
    st.binary(max_size=120).map(lambda raw: raw.decode("latin-1")),
    st.text(max_size=60),
).filter(lambda value: "\r" not in value and "\n" not in value)

signatures = st.one_of(
    header_values,
    st.builds(lambda sig: "v1," + sig, header_values),
    st.lists(st.sampled_from(["v1", "v2", ",", " ", "=", "a", "Zm9v", "\xff", "é"]), max_size=12).map("".join),
)
timestamps = st.one_of(header_values, st.integers(-(10**20), 10**20).map(str), st.floats().map(str))
addresses = st.one_of(header_values, st.ip_addresses().map(str))

bodies = st.one_of(
    st.binary(max_size=LIMIT + 100),
    st.text(max_size=500).map(str.encode),
    st.sampled_from([b"{}", b"[]", b"null", b'{"type": "user.created"}', b'{"id": "evt_1&1", "event": "X"}']),
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Mostly usable ids and types (any non-blank text, NUL and lone surrogates included), so
# that most examples reach the insert; sometimes any JSON value in their place.
names = st.one_of(st.sampled_from(["user.created", "PAYMENT_CONFIRMED", "evt_1&2"]), st.text(min_size=1, max_size=30))
fields = st.one_of(names, names, names, json_values)
clerk_events = st.one_of(st.fixed_dictionaries({"type": fields, "data": json_values}), json_values)
asaas_events = st.one_of(st.fixed_dictionaries({"id": fields, "event": fields, "payment": json_values}), json_values)


def _json_bytes(value, ensure_ascii: bool) -> bytes:
    # ensure_ascii=True writes lone surrogates as \ud800 escapes; False writes them raw, and
    # then the text cannot be encoded at all (those examples are skipped).
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        reject()


def _assert_deliberate(response) -> None:
    event(f"status {response.status_code}")  # the spread shows with --hypothesis-show-statistics
    assert response.status_code in DELIBERATE, (response.status_code, response.get_data(as_text=True))
    assert response.is_json
    if response.status_code != 200:
        assert set(response.json) == {"error", "detail"}


@pytest.fixture
def fuzz_client(make_app):
    return make_app(max_body_bytes=LIMIT).test_client()


@pytest.fixture
def guarded_client(make_app):
    """Asaas behind one trusted proxy with an allow-list: the forwarded address is parsed too."""
    return make_app(max_body_bytes=LIMIT, asaas_allowed_ips="127.0.0.1,10.0.0.0/8", trusted_proxy_count=1).test_client()


@FUZZ
@given(
    body=bodies,
    headers=st.fixed_dictionaries(
        {},
        optional={
            "svix-id": header_values,
            "svix-timestamp": timestamps,
            "svix-signature": signatures,
            "content-type": header_values,
        },
    ),
)
def test_clerk_never_answers_500_to_arbitrary_bytes(fuzz_client, session_factory, body, headers):
    _assert_deliberate(fuzz_client.post("/webhooks/clerk", data=body, headers=headers))


@FUZZ
@given(body=bodies, token=st.one_of(header_values, st.just(ASAAS_TEST_TOKEN)))
def test_asaas_never_answers_500_to_arbitrary_bytes(fuzz_client, session_factory, body, token):
    _assert_deliberate(fuzz_client.post("/webhooks/asaas", data=body, headers={"asaas-access-token": token}))


@FUZZ
@given(
    forwarded=st.one_of(st.none(), addresses, st.lists(addresses, max_size=3).map(", ".join)),
    remote=st.one_of(st.just("127.0.0.1"), st.just("10.1.2.3"), addresses),
)
def test_asaas_never_answers_500_to_arbitrary_addresses(guarded_client, session_factory, forwarded, remote):
    headers = {"asaas-access-token": ASAAS_TEST_TOKEN}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    body = b'{"id": "evt_fuzz&1", "event": "PAYMENT_CREATED"}'
    response = guarded_client.post("/webhooks/asaas", data=body, headers=headers, environ_base={"REMOTE_ADDR": remote})
    _assert_deliberate(response)
    assert response.status_code in {200, 403}


@FUZZ
@given(
    document=clerk_events,
    ensure_ascii=st.booleans(),
    msg_id=st.one_of(st.uuids().map(lambda u: f"msg_{u.hex}"), header_values),
)
def test_clerk_answers_200_or_400_to_any_signed_body(fuzz_client, session_factory, document, ensure_ascii, msg_id):
    # Past authentication: whatever a correctly signed body holds is stored or refused with
    # a 400, never crashes the insert (NUL, lone surrogates, NaN, huge numbers, odd ids).
    assume(msg_id.strip())
    body = _json_bytes(document, ensure_ascii)
    response = fuzz_client.post("/webhooks/clerk", data=body, headers=clerk_headers(body, msg_id=msg_id))
    _assert_deliberate(response)
    assert response.status_code in {200, 400, 413}
    if response.status_code == 200:
        _assert_stored(session_factory, response.json, "clerk", msg_id, body)


@FUZZ
@given(document=asaas_events, ensure_ascii=st.booleans())
def test_asaas_answers_200_or_400_to_any_authenticated_body(fuzz_client, session_factory, document, ensure_ascii):
    body = _json_bytes(document, ensure_ascii)
    response = fuzz_client.post("/webhooks/asaas", data=body, headers={"asaas-access-token": ASAAS_TEST_TOKEN})
    _assert_deliberate(response)
    assert response.status_code in {200, 400, 413}
    if response.status_code == 200:
        _assert_stored(session_factory, response.json, "asaas", json.loads(body)["id"], body)


def _assert_stored(factory, answer: dict, source: str, external_id: str, body: bytes) -> None:
    """A 200 means the inbox holds the delivery under its provider id: `accepted` stored this
    body (compared as PostgreSQL compares jsonb: numbers by value, object keys unordered, the
    last of duplicate keys), `duplicate` found the one stored under that id before."""
    with factory() as session:
        row = session.execute(
            select(WebhookInbox.id, WebhookInbox.payload == cast(literal(body.decode("utf-8"), Text), JSONB)).where(
                WebhookInbox.source == source, WebhookInbox.external_id == external_id
            )
        ).one_or_none()
    assert row is not None, f"answered {answer} but no {source} row has the id {external_id!r}"
    if answer["status"] == "accepted":
        assert answer == {"status": "accepted", "inbox_id": row.id}
        assert row[1] is True, "the stored payload is not the body that was sent"
    else:
        assert answer == {"status": "duplicate"}
