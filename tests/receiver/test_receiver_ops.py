"""Health, readiness, metrics, JSON errors, start-up configuration, and secrets that never leak."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.settings import ConfigError
from receiver.app import EXTENSION, create_app
from tests.conftest import ASAAS_TEST_TOKEN, CLERK_TEST_SECRET
from tests.support.databases import settings_copy
from tests.support.receiver_support import (
    asaas_headers,
    clerk_headers,
    down_database_url,
    down_redis_url,
    json_body,
    payload_bytes,
)

# A 32-byte key, whose base64 ends with padding ("=").
PADDED_SECRET = "whsec_" + base64.b64encode(b"unpadded-secret-for-pedro-tests!").decode()
assert PADDED_SECRET.endswith("=")


def test_healthz_answers_while_the_process_is_alive(make_app, session_factory):
    # Liveness depends on nothing outside the process.
    client = make_app(database_url=down_database_url(), redis_url=down_redis_url()).test_client()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_200_when_postgresql_and_redis_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ready"}


@pytest.mark.parametrize(
    ("down", "changes"),
    [
        (["postgresql"], {"database_url": "down"}),
        (["redis"], {"redis_url": "down"}),
        (["postgresql", "redis"], {"database_url": "down", "redis_url": "down"}),
    ],
)
def test_readyz_is_503_and_only_the_log_names_what_is_unreachable(make_app, session_factory, caplog, down, changes):
    urls = {"database_url": down_database_url, "redis_url": down_redis_url}
    client = make_app(**{name: urls[name]() for name in changes}).test_client()
    with caplog.at_level("WARNING", logger="receiver"):
        response = client.get("/readyz")
    assert response.status_code == 503
    # Up or down, nothing more: no dependency, address or error reaches an anonymous caller.
    assert response.json == {"error": "not_ready", "detail": "not ready"}
    for name in down:
        assert f"readyz.{name}_unreachable" in caplog.text


def _samples(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the app's metrics expose (under gunicorn the master serves them on their own port:
    test_receiver_gunicorn.py)."""
    body, content_type = client.application.extensions[EXTENSION].metrics.exposition()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_metrics_are_not_served_on_the_webhook_port(client):
    response = client.get("/metrics")
    assert response.status_code == 404
    assert response.json["error"] == "not_found"


def _count(samples, source: str, outcome: str) -> float:
    return samples[("webhook_deliveries_total", (("outcome", outcome), ("source", source)))]


def test_metrics_count_deliveries_by_source_and_outcome(make_app, session_factory):
    client = make_app(asaas_allowed_ips="127.0.0.1", max_body_bytes=4096).test_client()
    clerk_body = payload_bytes("clerk/user.created")
    clerk = clerk_headers(clerk_body)
    asaas_body = payload_bytes("asaas/PAYMENT_CONFIRMED")

    client.post("/webhooks/clerk", data=clerk_body, headers=clerk)  # accepted
    client.post("/webhooks/clerk", data=clerk_body, headers=clerk)  # duplicate
    client.post("/webhooks/clerk", data=clerk_body, headers={**clerk, "svix-signature": "v1,"})
    client.post("/webhooks/clerk", data=b"x" * 5000, headers=clerk)  # too large
    client.post("/webhooks/asaas", data=asaas_body, headers=asaas_headers())  # accepted
    client.post("/webhooks/asaas", data=asaas_body, headers=asaas_headers("wrong"))
    client.post("/webhooks/asaas", data=asaas_body, headers=asaas_headers(), environ_base={"REMOTE_ADDR": "192.0.2.1"})
    client.post("/webhooks/asaas", data=b"[]", headers=asaas_headers())
    client.post("/webhooks/asaas", data=json_body({"event": "PAYMENT_CREATED"}), headers=asaas_headers())

    samples = _samples(client)
    expected = {
        ("clerk", "accepted"): 1,
        ("clerk", "duplicate"): 1,
        ("clerk", "bad_signature"): 1,
        ("clerk", "too_large"): 1,
        ("clerk", "queued"): 0,
        ("asaas", "accepted"): 1,
        ("asaas", "bad_token"): 1,
        ("asaas", "forbidden_ip"): 1,
        ("asaas", "malformed"): 1,
        ("asaas", "missing_id"): 1,
        ("asaas", "unavailable"): 0,
    }
    assert {key: _count(samples, *key) for key in expected} == expected
    assert samples[("webhook_request_duration_seconds_count", (("source", "clerk"),))] == 4
    assert samples[("webhook_request_duration_seconds_count", (("source", "asaas"),))] == 5


def test_metrics_count_queued_and_unavailable(make_app, session_factory, durable_redis_url, durable_redis):
    queued = make_app(database_url=down_database_url(), redis_url=durable_redis_url).test_client()
    unavailable = make_app(database_url=down_database_url(), redis_url=down_redis_url()).test_client()
    body = payload_bytes("asaas/PAYMENT_CREATED")
    assert queued.post("/webhooks/asaas", data=body, headers=asaas_headers()).status_code == 200
    assert unavailable.post("/webhooks/asaas", data=body, headers=asaas_headers()).status_code == 503
    # One registry per app: each app counts only its own deliveries.
    assert _count(_samples(queued), "asaas", "queued") == 1
    assert _count(_samples(queued), "asaas", "unavailable") == 0
    assert _count(_samples(unavailable), "asaas", "unavailable") == 1


class TestJsonErrors:
    def test_an_unknown_path_is_a_json_404(self, client):
        response = client.get("/webhooks/stripe")
        assert response.status_code == 404
        assert response.is_json
        assert response.json["error"] == "not_found"
        assert set(response.json) == {"error", "detail"}

    @pytest.mark.parametrize("path", ["/webhooks/clerk", "/webhooks/asaas"])
    def test_a_wrong_method_is_a_json_405_that_names_the_allowed_ones(self, client, path):
        response = client.get(path)
        assert response.status_code == 405
        assert response.json["error"] == "method_not_allowed"
        assert "POST" in response.headers["Allow"]

    def test_a_post_to_a_probe_is_a_json_405(self, client):
        response = client.post("/healthz")
        assert response.status_code == 405
        assert response.json["error"] == "method_not_allowed"

    def test_an_unexpected_error_is_a_json_500_that_leaks_nothing(self, app, caplog):
        def explode():
            raise RuntimeError("password=hunter2 in some internal message")

        app.add_url_rule("/explode", view_func=explode)
        response = app.test_client().get("/explode")
        assert response.status_code == 500
        assert response.json == {"error": "internal", "detail": "internal server error"}
        assert "hunter2" not in response.get_data(as_text=True)
        assert "request.failed error=RuntimeError" in caplog.text


class TestStartUp:
    def test_without_arguments_the_settings_come_from_the_environment(self, settings, session_factory):
        app = create_app()
        try:
            assert app.test_client().get("/healthz").status_code == 200
        finally:
            app.extensions[EXTENSION].close()

    @pytest.mark.parametrize(
        ("field", "variable"),
        [
            ("clerk_webhook_signing_secret", "CLERK_WEBHOOK_SIGNING_SECRET"),
            ("asaas_webhook_token", "ASAAS_WEBHOOK_TOKEN"),
            ("ingest_signing_key", "INGEST_SIGNING_KEY"),
        ],
    )
    @pytest.mark.parametrize("value", [None, "", " , "])
    def test_a_missing_secret_stops_start_up_naming_the_variable(self, receiver_settings, field, variable, value):
        with pytest.raises(ConfigError, match=variable):
            create_app(settings_copy(receiver_settings, **{field: value}))

    @pytest.mark.parametrize(
        "key",
        ["", "Zm9vYmFyX", "Zm9v!YmFy", "Zm9v YmFy", "'Zm9vYmFy'", "Zm9vYmFy=="[:-1] + "\u00e9"],
        ids=["empty", "truncated", "bang", "space", "quoted", "non-ascii"],
    )
    def test_a_malformed_clerk_secret_stops_start_up_without_echoing_it(self, receiver_settings, key):
        rotation = f"{CLERK_TEST_SECRET},whsec_{key}"
        with pytest.raises(ConfigError, match="CLERK_WEBHOOK_SIGNING_SECRET") as raised:
            create_app(settings_copy(receiver_settings, clerk_webhook_signing_secret=rotation))
        message = str(raised.value)
        assert (key == "" or key not in message) and CLERK_TEST_SECRET.removeprefix("whsec_") not in message
        assert raised.value.__cause__ is None

    @pytest.mark.parametrize(
        ("secret", "signed_with"),
        [
            (CLERK_TEST_SECRET, CLERK_TEST_SECRET),
            (PADDED_SECRET, PADDED_SECRET),
            # Svix secrets may come without their base64 padding: the same key.
            (PADDED_SECRET.rstrip("="), PADDED_SECRET),
            (PADDED_SECRET.rstrip("="), PADDED_SECRET.rstrip("=")),
            ("whsec_Zm9vYmFy", "whsec_Zm9vYmFy"),
        ],
        ids=["test-secret", "padded", "unpadded", "unpadded-both", "short"],
    )
    def test_a_well_formed_clerk_secret_is_accepted_padded_or_not(self, make_app, session_factory, secret, signed_with):
        """The app starts with the secret, and a delivery Svix signed with that key is accepted."""
        client = make_app(clerk_webhook_signing_secret=secret).test_client()
        body = payload_bytes("clerk/user.created")
        response = client.post("/webhooks/clerk", data=body, headers=clerk_headers(body, secret=signed_with))
        assert response.status_code == 200, response.json
        assert response.json["status"] == "accepted"

    def test_the_receiver_imports_no_worker_task(self):
        # Tasks are sent by name: importing them would pull the worker's code (and its Celery
        # app configuration) into every web process. It shares only the producer configuration
        # and the signed ingest message's format.
        code = (
            "import sys, receiver.app, receiver.gunicorn_conf\n"
            "shared = {'worker', 'messaging.celery_config', 'messaging.ingest_message'}\n"
            "loaded = [m for m in sys.modules if m.startswith('worker') and m not in shared]\n"
            "assert not loaded, loaded\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("log_level", "expected"), [("", "INFO"), ("DEBUG", "DEBUG"), ("warning", "WARNING")])
def test_the_receivers_log_level_follows_log_level(log_level, expected):
    code = "import receiver.gunicorn_conf as c; print(c.logconfig_dict['loggers']['receiver']['level'])"
    environ = {**os.environ, "LOG_LEVEL": log_level, "PROMETHEUS_MULTIPROC_DIR": "/nonexistent-not-created"}
    printed = subprocess.run([sys.executable, "-c", code], env=environ, check=True, capture_output=True, text=True)
    assert printed.stdout.strip() == expected


def test_no_secret_signature_token_or_body_reaches_a_response_or_the_log(make_app, session_factory, caplog):
    client = make_app(asaas_allowed_ips="127.0.0.1").test_client()
    marker = "body-marker-7f3a9c"
    body = json_body({"type": "user.created", "data": {"note": marker}, "id": "evt_x&1", "event": "PAYMENT_CREATED"})
    signed = clerk_headers(body)
    wrong_token = "presented-wrong-token-55aa"
    forged = "v1,Zm9yZ2VkLXNpZ25hdHVyZS1mb3ItdGhlLXRlc3Q="
    requests = [
        ("/webhooks/clerk", signed, body, {}),
        ("/webhooks/clerk", signed, body, {}),
        ("/webhooks/clerk", {**signed, "svix-signature": forged}, body, {}),
        ("/webhooks/clerk", {**signed, "svix-signature": "v1,\xff"}, body, {}),
        ("/webhooks/clerk", clerk_headers(b"[]"), b"[]", {}),
        ("/webhooks/asaas", asaas_headers(), body, {}),
        ("/webhooks/asaas", asaas_headers(wrong_token), body, {}),
        ("/webhooks/asaas", asaas_headers(), body, {"REMOTE_ADDR": "192.0.2.9"}),
        ("/webhooks/asaas", asaas_headers(), b"{" + marker.encode(), {}),
    ]
    with caplog.at_level("DEBUG"):
        answers = [
            client.post(path, data=data, headers=headers, environ_base=environ).get_data(as_text=True)
            for path, headers, data, environ in requests
        ]
        answers.append(client.get("/metrics").get_data(as_text=True))
        answers.append(client.get("/readyz").get_data(as_text=True))

    secret_key = CLERK_TEST_SECRET.removeprefix("whsec_")
    never = [CLERK_TEST_SECRET, secret_key, ASAAS_TEST_TOKEN, wrong_token, forged, signed["svix-signature"], marker]
    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    for text in never:
        assert text not in logged, text
        assert all(text not in answer for answer in answers), text
    assert "webhook.rejected source=asaas reason=bad_token" in caplog.text
