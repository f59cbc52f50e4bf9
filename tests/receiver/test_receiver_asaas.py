"""POST /webhooks/asaas: a static token header compared in constant time, an optional source
address allow-list, the body's `id` (opaque, contains `&`) as the deduplication key."""

from __future__ import annotations

import json

import pytest

from models.settings import ConfigError
from tests.conftest import ASAAS_TEST_TOKEN
from tests.support.databases import settings_copy
from tests.support.receiver_support import (
    QueuedTask,
    asaas_headers,
    inbox_rows,
    json_body,
    payload_bytes,
    payload_names,
)

URL = "/webhooks/asaas"
ALLOWED = "203.0.113.5"
PROXY = "10.0.0.1"


def _post(client, body: bytes, headers: dict[str, str], remote_addr: str = "127.0.0.1"):
    return client.post(URL, data=body, headers=headers, environ_base={"REMOTE_ADDR": remote_addr})


def _assert_nothing_stored(session_factory, queue) -> None:
    assert inbox_rows(session_factory) == []
    assert queue() == []


def test_a_delivery_with_the_token_is_stored_once_and_enqueued(client, session_factory, queue):
    body = payload_bytes("asaas/PAYMENT_CONFIRMED")

    response = _post(client, body, asaas_headers())

    [row] = inbox_rows(session_factory)
    assert response.status_code == 200
    assert response.json == {"status": "accepted", "inbox_id": row.id}
    # The id is opaque: stored exactly as sent, `&` and all.
    assert (row.source, row.external_id, row.event_type) == (
        "asaas",
        "evt_05b708f961d739ea7eba7e4db318f621&368604919",
        "PAYMENT_CONFIRMED",
    )
    assert row.payload == json.loads(body)
    assert queue() == [QueuedTask("webhooks.process", [], {"inbox_id": row.id})]


@pytest.mark.parametrize("name", payload_names("asaas"))
def test_every_documented_asaas_event_is_accepted(client, session_factory, name):
    body = payload_bytes(name)
    response = _post(client, body, asaas_headers())
    assert response.status_code == 200, response.json
    [row] = inbox_rows(session_factory)
    assert row.event_type == json.loads(body)["event"]


def test_a_redelivered_event_is_a_200_duplicate(client, session_factory, queue):
    body = payload_bytes("asaas/PAYMENT_RECEIVED")
    assert _post(client, body, asaas_headers()).json["status"] == "accepted"
    response = _post(client, body, asaas_headers())
    # Asaas counts anything but exactly 200 as a failure and pauses its queue after 15.
    assert response.status_code == 200
    assert response.json == {"status": "duplicate"}
    assert len(inbox_rows(session_factory)) == 1
    assert len(queue()) == 1


def test_events_differing_only_after_the_ampersand_are_distinct(client, session_factory):
    body = json.loads(payload_bytes("asaas/PAYMENT_CREATED"))
    for suffix in ("&1", "&2"):
        response = _post(client, json_body({**body, "id": "evt_same" + suffix}), asaas_headers())
        assert response.json["status"] == "accepted"
    assert sorted(row.external_id for row in inbox_rows(session_factory)) == ["evt_same&1", "evt_same&2"]


@pytest.mark.parametrize("presented", ["new-token-abcdef", ASAAS_TEST_TOKEN])
def test_every_token_of_a_rotation_is_accepted(make_app, session_factory, presented):
    client = make_app(asaas_webhook_token=f"new-token-abcdef,{ASAAS_TEST_TOKEN}").test_client()
    response = _post(client, payload_bytes("asaas/PAYMENT_CREATED"), asaas_headers(presented))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        asaas_headers(""),
        asaas_headers("wrong"),
        asaas_headers(ASAAS_TEST_TOKEN[:-1]),
        asaas_headers(ASAAS_TEST_TOKEN + "x"),
        asaas_headers(ASAAS_TEST_TOKEN.upper()),
        asaas_headers(" " + ASAAS_TEST_TOKEN + "x"),
        asaas_headers(ASAAS_TEST_TOKEN + "\u20ac"),  # not latin-1: only an in-process caller can send it
        asaas_headers("\xff\x00"),
    ],
    ids=["absent", "empty", "wrong", "prefix", "longer", "upper", "padded", "non-latin1", "binary"],
)
def test_a_missing_or_wrong_token_is_a_401_and_stores_nothing(client, session_factory, queue, headers):
    response = _post(client, payload_bytes("asaas/PAYMENT_CONFIRMED"), headers)
    assert response.status_code == 401
    # Which check failed: no token at all, or one that matches none configured.
    presented = headers.get("asaas-access-token")
    assert response.json["error"] == ("bad_token" if presented else "missing_token")
    assert ASAAS_TEST_TOKEN not in response.get_data(as_text=True)
    _assert_nothing_stored(session_factory, queue)


def test_a_wrong_token_is_refused_before_the_body_is_parsed(client, session_factory, queue):
    response = _post(client, b"not json", asaas_headers("wrong"))
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'"PAYMENT_CONFIRMED"', "malformed"),
        (b'{"id": "evt_1&1", "event": "PAYMENT_CONFIRMED", "v": Infinity}', "malformed"),
        (b'{"id": "evt_1&1", "event": "PAYMENT_CONFIRMED", "s": "\xc3\x28"}', "malformed"),  # not UTF-8
        (b'{"event": "PAYMENT_CONFIRMED"}', "missing_id"),
        (b'{"id": "", "event": "PAYMENT_CONFIRMED"}', "missing_id"),
        (b'{"id": 368604919, "event": "PAYMENT_CONFIRMED"}', "missing_id"),
        (b'{"id": null, "event": "PAYMENT_CONFIRMED"}', "missing_id"),
        (b'{"id": "evt_1&1"}', "missing_type"),
        (b'{"id": "evt_1&1", "event": ""}', "missing_type"),
        (b'{"id": "evt_1&1", "event": {"name": "PAYMENT_CONFIRMED"}}', "missing_type"),
    ],
)
def test_an_authenticated_body_that_is_not_an_event_is_a_400(client, session_factory, queue, body, error):
    response = _post(client, body, asaas_headers())
    assert response.status_code == 400
    assert response.json["error"] == error
    _assert_nothing_stored(session_factory, queue)


class TestSourceAddressAllowList:
    def test_an_allowed_address_is_accepted(self, make_app, session_factory):
        client = make_app(asaas_allowed_ips=f"198.51.100.1, {ALLOWED}").test_client()
        response = _post(client, payload_bytes("asaas/PAYMENT_CREATED"), asaas_headers(), remote_addr=ALLOWED)
        assert response.status_code == 200

    def test_another_address_is_a_403_even_with_the_token(self, make_app, session_factory, queue):
        client = make_app(asaas_allowed_ips=ALLOWED).test_client()
        response = _post(client, payload_bytes("asaas/PAYMENT_CREATED"), asaas_headers(), remote_addr="198.51.100.7")
        assert response.status_code == 403
        assert response.json["error"] == "forbidden_ip"
        _assert_nothing_stored(session_factory, queue)

    def test_networks_and_ipv4_mapped_addresses_match(self, make_app, session_factory):
        client = make_app(asaas_allowed_ips="203.0.113.0/24").test_client()
        for address in ("203.0.113.9", "::ffff:203.0.113.10"):
            body = json_body({"id": f"evt_{address}", "event": "PAYMENT_CREATED"})
            assert _post(client, body, asaas_headers(), remote_addr=address).status_code == 200

    def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(self, make_app, session_factory, queue):
        client = make_app(asaas_allowed_ips=ALLOWED).test_client()
        headers = {**asaas_headers(), "X-Forwarded-For": ALLOWED}
        response = _post(client, payload_bytes("asaas/PAYMENT_CREATED"), headers, remote_addr=PROXY)
        assert response.status_code == 403
        _assert_nothing_stored(session_factory, queue)

    def test_the_address_a_trusted_proxy_forwards_is_the_client(self, make_app, session_factory):
        client = make_app(asaas_allowed_ips=ALLOWED, trusted_proxy_count=1).test_client()
        headers = {**asaas_headers(), "X-Forwarded-For": ALLOWED}
        response = _post(client, payload_bytes("asaas/PAYMENT_CREATED"), headers, remote_addr=PROXY)
        assert response.status_code == 200

    def test_an_address_the_client_prepended_is_not_trusted(self, make_app, session_factory, queue):
        # The client sent "X-Forwarded-For: <allowed>"; our one proxy appended the real address.
        client = make_app(asaas_allowed_ips=ALLOWED, trusted_proxy_count=1).test_client()
        headers = {**asaas_headers(), "X-Forwarded-For": f"{ALLOWED}, 198.51.100.7"}
        response = _post(client, payload_bytes("asaas/PAYMENT_CREATED"), headers, remote_addr=PROXY)
        assert response.status_code == 403
        _assert_nothing_stored(session_factory, queue)

    def test_two_trusted_proxies(self, make_app, session_factory):
        client = make_app(asaas_allowed_ips=ALLOWED, trusted_proxy_count=2).test_client()
        headers = {**asaas_headers(), "X-Forwarded-For": f"192.0.2.77, {ALLOWED}, 10.0.0.2"}
        response = _post(client, payload_bytes("asaas/PAYMENT_CREATED"), headers, remote_addr=PROXY)
        assert response.status_code == 200

    @pytest.mark.parametrize("forwarded", ["not-an-ip", "", "999.1.1.1", "\xff"])
    def test_an_unparseable_forwarded_address_is_a_403(self, make_app, session_factory, forwarded):
        client = make_app(asaas_allowed_ips=ALLOWED, trusted_proxy_count=1).test_client()
        headers = {**asaas_headers(), "X-Forwarded-For": forwarded}
        response = _post(client, payload_bytes("asaas/PAYMENT_CREATED"), headers, remote_addr=PROXY)
        assert response.status_code == 403

    def test_a_malformed_allow_list_stops_start_up(self, receiver_settings):
        from receiver.app import create_app

        with pytest.raises(ConfigError, match="ASAAS_ALLOWED_IPS") as raised:
            create_app(settings_copy(receiver_settings, asaas_allowed_ips="203.0.113.5, nonsense-host"))
        assert "nonsense-host" not in str(raised.value)
