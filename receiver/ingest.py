"""From raw bytes to a stored, enqueued delivery: size limit, JSON parsing, inbox, queue.

The promise to a provider is "200 means we have it": an answer of 200 is given only once the
delivery is in PostgreSQL (the inbox) or, with PostgreSQL down, in a Redis that persists every
write (receiver/durability.py): an entry of the fallback store (messaging/fallback_store.py),
which the workers remove only once it is in the inbox. Anything else is an error the provider
retries.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import ClientDisconnected

from celery_ext.redis_transport import TaskMessageWriter
from messaging.celery_config import DRAIN_FALLBACK_TASK, PROCESS_WEBHOOK_TASK, create_producer, drain_expiry_seconds
from messaging.fallback_store import FallbackStore
from messaging.ingest_message import IngestSigner
from models.db import once_more_if_disconnected
from models.inbox import DeliveryRecorder, Source
from models.settings import Settings
from receiver.durability import RedisDurability
from receiver.errors import Rejected

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024

# A provider waits on our answer and gunicorn kills a worker stuck past its timeout, so an
# unreachable Redis must fail in about a second, not after kombu's default reconnect loop.
BROKER_SOCKET_TIMEOUT = 1.0
_SEND_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
# What a failed publish raises: kombu wraps most connection errors in its OperationalError,
# redis-py's own errors and bare socket errors can still escape from some code paths.
BROKER_ERRORS = (KombuError, RedisError, OSError)


@dataclass(frozen=True)
class Body:
    """A verified body parsed as a JSON object: the object, and the text it came from."""

    text: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    source: str
    external_id: str
    event_type: str
    payload: dict[str, Any]
    payload_json: str  # the body as the provider sent it: what the inbox stores

    @classmethod
    def from_clerk(cls, body: Body, svix_id: str) -> Delivery:
        # Svix keeps `svix-id` across retries of one message: it is the deduplication key.
        return cls(
            source=Source.CLERK.value,
            external_id=require_text(svix_id, "missing_id", "the svix-id header"),
            event_type=require_text(body.payload.get("type"), "missing_type", "the body's `type`"),
            payload=body.payload,
            payload_json=body.text,
        )

    @classmethod
    def from_asaas(cls, body: Body) -> Delivery:
        # Asaas event ids are opaque (they contain `&`): stored exactly as sent.
        return cls(
            source=Source.ASAAS.value,
            external_id=require_text(body.payload.get("id"), "missing_id", "the body's `id`"),
            event_type=require_text(body.payload.get("event"), "missing_type", "the body's `event`"),
            payload=body.payload,
            payload_json=body.text,
        )

    def task_kwargs(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "external_id": self.external_id,
            "event_type": self.event_type,
            "payload": self.payload,
        }


@dataclass(frozen=True)
class Outcome:
    status: str  # accepted | duplicate | queued: also the metrics outcome label
    inbox_id: int | None = None

    def body(self) -> dict[str, Any]:
        if self.inbox_id is None:
            return {"status": self.status}
        return {"status": self.status, "inbox_id": self.inbox_id}


def check_declared_size(content_length: int | None, limit: int) -> None:
    """413 for a declared Content-Length over the limit, before anything else is looked at."""
    if content_length is not None and content_length > limit:
        raise _too_large(limit)


@contextmanager
def body_deadline(client_socket: socket.socket | None, seconds: float) -> Iterator[None]:
    """Under gunicorn (`gunicorn.socket` in the environ), a read of the body that waits longer
    than `seconds` for a byte fails instead of holding the worker. (Without a socket, e.g. in
    tests, reads cannot stall.) A client trickling a byte now and then is not stopped by this:
    gunicorn reads a body to the size asked for, so only its worker `timeout` ends such a
    request; hence the buffering proxy production needs (docs/production.md)."""
    if client_socket is None:
        yield
        return
    previous = client_socket.gettimeout()
    client_socket.settimeout(seconds)
    try:
        yield
    finally:
        client_socket.settimeout(previous)


def read_body(content_length: int | None, stream: IO[bytes], limit: int, timeout: float | None = None) -> bytes:
    """The raw body, or 413 without reading more than `limit + 1` bytes of it, or 408 when the
    client is too slow: no byte for `timeout` seconds (body_deadline), or more than `timeout`
    seconds spent when a read returns."""
    check_declared_size(content_length, limit)
    deadline = None if timeout is None else time.monotonic() + timeout
    # A chunked body has no Content-Length: read in bounded chunks (a single read may return
    # less than asked) and stop one byte past the limit.
    body = bytearray()
    try:
        while len(body) <= limit:
            if deadline is not None and time.monotonic() > deadline:
                raise _too_slow(timeout)
            chunk = stream.read(min(_READ_CHUNK, limit + 1 - len(body)))
            if not chunk:
                break
            body += chunk
    except ClientDisconnected:
        raise Rejected(400, "malformed", "the body ended before its Content-Length") from None
    except TimeoutError:  # the socket's timeout (body_deadline): no byte came in time
        raise _too_slow(timeout) from None
    if len(body) > limit:
        raise _too_large(limit)
    return bytes(body)


def _too_slow(timeout: float | None) -> Rejected:
    return Rejected(408, "timeout", f"the body did not arrive within {timeout:g} seconds")


def _too_large(limit: int) -> Rejected:
    return Rejected(413, "too_large", f"the body exceeds {limit} bytes")


def parse_object(body: bytes) -> Body:
    """Parse an authenticated body as a JSON object PostgreSQL's jsonb can hold, or 400."""
    try:
        # Decoded explicitly: json.loads(bytes) would also accept UTF-16 and UTF-32.
        text = body.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    # UnicodeDecodeError: not UTF-8; ValueError: not JSON (or an integer beyond Python's digit
    # limit); RecursionError: nesting deeper than the parser can follow.
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected(400, "malformed", "the body is not a UTF-8 JSON document") from None
    if not isinstance(value, dict):
        raise Rejected(400, "malformed", "the body must be a JSON object")
    # A NUL or a lone surrogate can only come from a `\u` escape (the body is valid UTF-8 and
    # JSON strings hold no raw control character): without one, the walk has nothing to find.
    if b"\\u" in body and not _storable(value):
        raise Rejected(400, "malformed", "the body holds text PostgreSQL cannot store (NUL or a lone surrogate)")
    return Body(text, value)


def require_text(value: Any, code: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or not _storable_text(value):
        raise Rejected(400, code, f"{what} must be a non-empty string")
    return value


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and jsonb refuses them.
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which jsonb cannot hold
        raise ValueError("number out of range")
    return value


def _storable(value: Any) -> bool:
    # Iterative: a recursive walk of a deeply nested document could overflow the stack.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not _storable_text(item):
                return False
        elif isinstance(item, dict):
            if not all(_storable_text(key) for key in item):
                return False
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def _storable_text(text: str) -> bool:
    # PostgreSQL text and jsonb hold no NUL character; `\ud800` (a lone surrogate, legal in a
    # JSON string escape) is not Unicode text and jsonb refuses it too.
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def make_producer(settings: Settings) -> Celery:
    """The shared producer configuration, with broker timeouts short enough to answer on time."""
    producer = create_producer(settings)
    producer.conf.update(
        # No `task-sent` event: it is a second publish (a Redis PUBLISH to the events exchange)
        # for every delivery. Flower still sees each task from the worker's own events
        # (received, started, succeeded...).
        task_send_sent_event=False,
        broker_connection_timeout=BROKER_SOCKET_TIMEOUT,
        broker_transport_options={
            **producer.conf.broker_transport_options,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
        },
    )
    return producer


class Inbox:
    """Store a verified delivery once, then hand it to the workers."""

    def __init__(
        self,
        engine: Engine,
        producer: Celery,
        messages: TaskMessageWriter,
        signer: IngestSigner,
        durability: RedisDurability,
        fallback: FallbackStore,
        settings: Settings,
    ) -> None:
        self._recorder = DeliveryRecorder(engine)
        # Built once: a process answers one request at a time, and tenacity starts every loop
        # over the same `Retrying` afresh (its state is per thread).
        self._once_more_if_disconnected = once_more_if_disconnected()
        self._producer = producer
        self._messages = messages
        self._signer = signer
        self._durability = durability
        self._fallback = fallback
        self._nudge_seconds = settings.fallback_drain_interval_seconds
        self._nudge_expires = drain_expiry_seconds(settings)

    def accept(self, delivery: Delivery) -> Outcome:
        try:
            inbox_id = self._store(delivery)
        except (DBAPIError, PoolTimeoutError) as exc:
            if not _database_unavailable(exc):
                raise
            log.warning("webhook.database_unavailable source=%s error=%s", delivery.source, type(exc).__name__)
            return self._queue_for_ingest(delivery)

        if inbox_id is None:
            return Outcome("duplicate")
        # Enqueued only after the commit: a worker must never look for a row that is not there.
        try:
            self._messages.send(PROCESS_WEBHOOK_TASK, {"inbox_id": inbox_id})
        except BROKER_ERRORS as exc:
            # Still a 200: the row is committed as `pending` and `inbox.sweep` re-enqueues it.
            log.warning(
                "webhook.enqueue_failed source=%s inbox_id=%s error=%s",
                delivery.source,
                inbox_id,
                type(exc).__name__,
            )
        return Outcome("accepted", inbox_id)

    def close(self) -> None:
        self._recorder.close()

    def _store(self, delivery: Delivery) -> int | None:
        """One INSERT, committed when it returns (the engine is in autocommit: a one-statement
        transaction costs one round trip, not BEGIN, INSERT and COMMIT).

        The connection is not pinged before use (a round trip per delivery); a connection found
        dead is retried once on a fresh one instead. Repeating is safe: if the first INSERT did
        commit before its connection died, the second finds the row and answers "duplicate"
        (still a 200: the row is stored), and `inbox.sweep` enqueues the pending row whose
        message was never sent.
        """
        for attempt in self._once_more_if_disconnected:
            with attempt:
                return self._recorder.record(
                    source=delivery.source,
                    external_id=delivery.external_id,
                    event_type=delivery.event_type,
                    payload_json=delivery.payload_json,
                )
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _queue_for_ingest(self, delivery: Delivery) -> Outcome:
        # Read now, not at start-up: an operator may have changed Redis's persistence since.
        broker = self._durability.check()
        if not broker.durable:
            # A Redis restart would lose it after we said 200: the provider must keep it instead.
            log.error(
                "webhook.unavailable source=%s reason=broker_not_durable detail=%s", delivery.source, broker.reason
            )
            raise Rejected(503, "unavailable", "the delivery could not be stored; retry later")
        try:
            # Signed: a worker stores only what the receiver verified, never an entry someone
            # else with access to Redis put there.
            nudge = self._fallback.add(self._signer.entry(delivery.task_kwargs()), self._nudge_seconds)
        except BROKER_ERRORS as exc:
            log.error("webhook.unavailable source=%s error=%s", delivery.source, type(exc).__name__)
            # Stored nowhere: the provider must keep it and retry.
            raise Rejected(503, "unavailable", "the delivery could not be stored or queued; retry later") from None
        if nudge:
            self._nudge_drain()
        return Outcome("queued")

    def _nudge_drain(self) -> None:
        """Ask a worker to drain now, so a PostgreSQL that is back gets the delivery promptly.
        Only a hint: the entry is kept whatever happens here, and beat drains on a schedule."""
        try:
            self._send(DRAIN_FALLBACK_TASK, {}, expires=self._nudge_expires)
        except BROKER_ERRORS as exc:
            log.warning("webhook.drain_nudge_failed error=%s", type(exc).__name__)

    def _send(self, task_name: str, kwargs: dict[str, Any], **options: Any) -> None:
        # By name: the receiver never imports worker code. `ignore_result`: nobody here waits
        # for a result, and without it Celery's Redis backend subscribes this process to a
        # result channel for every task it sends.
        self._producer.send_task(
            task_name,
            kwargs=kwargs,
            ignore_result=True,
            retry=True,
            retry_policy=_SEND_RETRY_POLICY,
            **options,
        )


def _database_unavailable(exc: Exception) -> bool:
    """A connection-level failure (server down, connection lost, pool exhausted).

    Other database errors (a constraint, a bad value) would fail the same way in the worker:
    they are bugs, and surface as a 500 rather than being queued to fail forever.
    """
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeoutError)):
        return True
    return bool(getattr(exc, "connection_invalidated", False))
