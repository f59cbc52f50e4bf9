"""The Flask receiver: verify, store once in the inbox, enqueue, answer 200. No business rules.

Served by gunicorn (`gunicorn "receiver.app:create_app()"`). Nothing is read from the
environment at import: `create_app()` loads the settings, so a missing variable stops start-up
with a message that names it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from celery_ext.redis_transport import TaskMessageWriter
from messaging.fallback_store import FallbackStore
from messaging.ingest_message import IngestSigner
from models.db import make_engine
from models.inbox import Source
from models.logs import bind_event, clear_event
from models.settings import Settings, load_settings
from receiver.durability import RedisDurability
from receiver.errors import Rejected, error_response, register_error_handlers
from receiver.health import Readiness, probe_client
from receiver.ingest import (
    BROKER_SOCKET_TIMEOUT,
    Delivery,
    Inbox,
    body_deadline,
    check_declared_size,
    make_producer,
    parse_object,
    read_body,
)
from receiver.metrics import Metrics
from receiver.verification import AsaasVerifier, ClerkVerifier

log = logging.getLogger(__name__)

EXTENSION = "pedro_receiver"

bp = Blueprint("receiver", __name__)


@dataclass(frozen=True)
class Receiver:
    """What one app instance (one gunicorn worker) holds, kept in `app.extensions`."""

    settings: Settings
    clerk: ClerkVerifier
    asaas: AsaasVerifier
    inbox: Inbox
    readiness: Readiness
    durability: RedisDurability
    metrics: Metrics
    engine: Engine
    producer: Celery
    messages: TaskMessageWriter

    def close(self) -> None:
        self.inbox.close()
        self.readiness.close()
        self.messages.close()
        self.producer.close()
        self.engine.dispose()


def create_app(settings: Settings | None = None) -> Flask:
    if settings is None:
        settings = load_settings()
    # Secrets first: a receiver that could authenticate nothing must not start at all.
    clerk = ClerkVerifier(settings.clerk_secrets)
    asaas = AsaasVerifier(settings.asaas_tokens, settings.asaas_ip_allowlist)
    signer = IngestSigner(settings.ingest_signing_keys)
    # Built here, per process; the engine and producer do not connect before their first use, so
    # a gunicorn master that preloads the app forks no open connection of theirs (the probe
    # client's pool, used below, notices a fork and reconnects in the child).
    # Autocommit: the receiver's only write is one INSERT, its own transaction (Inbox._store).
    # No pre-ping: Inbox._store and Readiness retry once on a connection found dead instead.
    engine = make_engine(settings, pre_ping=False, isolation_level="AUTOCOMMIT")
    producer = make_producer(settings)
    messages = TaskMessageWriter(producer, settings.redis_url.get_secret_value(), BROKER_SOCKET_TIMEOUT)
    probes = probe_client(settings)
    durability = RedisDurability(settings, probes)
    durability.check()  # logged: whether a delivery may wait in Redis while PostgreSQL is down

    app = Flask(__name__)
    app.extensions[EXTENSION] = Receiver(
        settings=settings,
        clerk=clerk,
        asaas=asaas,
        # The fallback store shares the probes' client: short timeouts, so a Redis that hangs
        # costs a provider a 503 in about a second, not a gunicorn timeout.
        inbox=Inbox(engine, producer, messages, signer, durability, FallbackStore(probes), settings),
        readiness=Readiness(engine, probes),
        durability=durability,
        metrics=Metrics(),
        engine=engine,
        producer=producer,
        messages=messages,
    )
    register_error_handlers(app)
    app.register_blueprint(bp)
    if settings.trusted_proxy_count:
        # Only the last `trusted_proxy_count` X-Forwarded-For entries were written by our own
        # proxies; anything left of them is whatever the client claimed. With no trusted
        # proxy the header is ignored and the socket's address is the client. (Replacing
        # `wsgi_app` is how Flask documents adding WSGI middleware; mypy sees a method assigned.)
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxy_count, x_proto=0, x_host=0, x_port=0, x_prefix=0
        )
    return app


def _receiver() -> Receiver:
    return current_app.extensions[EXTENSION]


# Everything a request's headers can decide is decided before its body is read: a client that
# is not allowed, or does not even claim to be a provider, never gets a worker to wait on its body.


@bp.post("/webhooks/clerk")
def clerk_webhook() -> tuple[Response, int]:
    receiver = _receiver()

    def verified_delivery() -> Delivery:
        check_declared_size(request.content_length, receiver.settings.max_body_bytes)
        svix_headers = receiver.clerk.require_headers(request.headers)
        body = _read_body(receiver)
        # Svix signs the exact bytes sent: verify before anything parses them.
        svix_id = receiver.clerk.verify(body, svix_headers)
        return Delivery.from_clerk(parse_object(body), svix_id)

    return _receive(receiver, Source.CLERK, verified_delivery)


@bp.post("/webhooks/asaas")
def asaas_webhook() -> tuple[Response, int]:
    receiver = _receiver()

    def verified_delivery() -> Delivery:
        check_declared_size(request.content_length, receiver.settings.max_body_bytes)
        receiver.asaas.check_source(request.remote_addr)
        receiver.asaas.check_token(request.headers)  # a header: no need to read the body first
        body = _read_body(receiver)
        return Delivery.from_asaas(parse_object(body))

    return _receive(receiver, Source.ASAAS, verified_delivery)


def _read_body(receiver: Receiver) -> bytes:
    timeout = receiver.settings.body_read_timeout_seconds
    with body_deadline(request.environ.get("gunicorn.socket"), timeout):
        return read_body(request.content_length, request.stream, receiver.settings.max_body_bytes, timeout)


def _receive(receiver: Receiver, source: Source, verified_delivery: Callable[[], Delivery]) -> tuple[Response, int]:
    started = time.perf_counter()
    outcome = "error"  # what the metrics record if something unexpected escapes below
    clear_event()  # every log line of this request (the access log's too) carries what follows
    bind_event(source=source.value)
    try:
        delivery = verified_delivery()
        bind_event(provider_event_id=delivery.external_id, event_type=delivery.event_type)
        result = receiver.inbox.accept(delivery)
        outcome = result.status
        bind_event(inbox_id=result.inbox_id, outcome=outcome)
    except Rejected as exc:
        outcome = exc.code
        bind_event(outcome=outcome)
        # Reason only: header values, tokens and bodies never reach the log.
        log.warning("webhook.rejected source=%s reason=%s status=%s", source.value, exc.code, exc.status)
        raise
    finally:
        receiver.metrics.observe(source.value, outcome, time.perf_counter() - started)
    # At DEBUG: the access log's line for this request already says it, with the same fields
    # bound above (inbox id, source, provider event id, type, outcome), and one line per
    # delivery is a tenth of the receiver's CPU.
    log.debug(
        "webhook.%s source=%s event_type=%s inbox_id=%s",
        result.status,
        source.value,
        delivery.event_type,
        result.inbox_id,
    )
    # Exactly 200, for a duplicate too: Asaas counts any other status (201/202/204 included)
    # as a failed delivery and pauses its queue after 15 failures in a row.
    return _json_answer(result.body()), 200


def _json_answer(body: dict[str, Any]) -> Response:
    """`body` as JSON, written as `jsonify` writes it (compact, keys sorted, a final newline)
    without looking up the app's JSON provider and its options on every delivery. Every answer
    of this module's routes is written here; error bodies by receiver/errors.py."""
    return Response(json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n", mimetype="application/json")


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    return _json_answer({"status": "ok"}), 200


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Up or down, nothing more: which dependency failed, and why, goes to the log only."""
    receiver = _receiver()
    checks = receiver.readiness.check()
    receiver.durability.check()  # logged when it changes: may deliveries wait in Redis?
    if any(state != "ok" for state in checks.values()):
        return error_response(503, "not_ready", "not ready")
    return _json_answer({"status": "ready"}), 200
