"""Helpers for the receiver tests: signed deliveries, the broker queue as Redis holds it,
settings copies pointing at servers that are down, receiver apps closed after use."""

from __future__ import annotations

import base64
import io
import json
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from svix.webhooks import Webhook
from werkzeug.test import EnvironBuilder, run_wsgi_app

from messaging.fallback_store import STREAM as FALLBACK_STREAM
from models.inbox import WebhookInbox
from models.settings import Settings
from receiver.app import EXTENSION, create_app
from tests.conftest import ASAAS_TEST_TOKEN, CLERK_TEST_SECRET
from tests.support.databases import settings_copy

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
QUEUE = "webhooks"


def payload_bytes(name: str) -> bytes:
    """A documented example delivery as sent on the wire, e.g. payload_bytes("clerk/user.created")."""
    return (PAYLOADS / f"{name}.json").read_bytes()


def payload_names(source: str) -> list[str]:
    return sorted(f"{source}/{path.stem}" for path in (PAYLOADS / source).glob("*.json"))


def new_msg_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def clerk_headers(
    body: bytes | str,
    *,
    secret: str = CLERK_TEST_SECRET,
    msg_id: str | None = None,
    timestamp: datetime | None = None,
) -> dict[str, str]:
    """The headers Svix sends with `body`, signed with `secret`."""
    text = body.decode() if isinstance(body, bytes) else body
    msg_id = msg_id or new_msg_id()
    timestamp = timestamp or datetime.now(tz=UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(timestamp.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, timestamp, text),
        "content-type": "application/json",
    }


def stale(minutes: int) -> datetime:
    return datetime.now(tz=UTC) - timedelta(minutes=minutes)


def asaas_headers(token: str = ASAAS_TEST_TOKEN) -> dict[str, str]:
    return {"asaas-access-token": token, "content-type": "application/json"}


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass(frozen=True)
class QueuedTask:
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    id: str = field(default="", compare=False)


def queued_tasks(client: redis.Redis, queue: str = QUEUE) -> list[QueuedTask]:
    """The messages waiting in a queue, oldest first.

    kombu's Redis transport keeps a queue as a LIST named like it (LPUSH to publish, BRPOP to
    consume); each item is a JSON envelope whose body is base64 JSON `[args, kwargs, embed]`.
    """
    tasks = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        tasks.append(QueuedTask(envelope["headers"]["task"], args, kwargs, envelope["headers"]["id"]))
    return tasks


def fallback_entries(client: redis.Redis) -> list[dict[str, str]]:
    """The fallback store's entries (messaging/fallback_store.py), oldest first, as text fields."""
    return [
        {key.decode(): value.decode() for key, value in fields.items()} for _, fields in client.xrange(FALLBACK_STREAM)
    ]


def unused_port() -> int:
    """A local TCP port nothing listens on (the kernel's pick, released again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def down_database_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{unused_port()}/down"


def down_redis_url() -> str:
    return f"redis://127.0.0.1:{unused_port()}/0"


def inbox_rows(factory: sessionmaker[Session]) -> list[WebhookInbox]:
    with factory() as session:
        return list(session.scalars(select(WebhookInbox).order_by(WebhookInbox.id)))


class CountingStream(io.RawIOBase):
    """A request body that records how many bytes the app read from it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.bytes_read += len(chunk)
        return len(chunk)


@dataclass(frozen=True)
class RawResponse:
    status: int
    json: dict[str, Any]


def post_raw(
    app: Flask,
    path: str,
    stream: io.RawIOBase,
    headers: dict[str, str],
    *,
    content_length: int | None = None,
) -> RawResponse:
    """POST with a body stream of our own, as a WSGI server would hand it over.

    Without `content_length` the request is chunked: no CONTENT_LENGTH, and
    `wsgi.input_terminated` set, which is how gunicorn and Werkzeug's server pass a
    de-chunked body (Werkzeug's test client always computes a Content-Length).
    """
    environ = EnvironBuilder(path=path, method="POST", headers=headers).get_environ()
    environ["wsgi.input"] = stream
    environ.pop("CONTENT_LENGTH", None)
    if content_length is None:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    app_iter, status, _headers = run_wsgi_app(app, environ, buffered=True)
    body = b"".join(app_iter)
    return RawResponse(int(status.split()[0]), json.loads(body))


@contextmanager
def receiver_apps(base: Settings) -> Iterator[Callable[..., Flask]]:
    """Build receiver apps from `base`, optionally with settings changed; close them all at
    the end (their engines, producers and Redis clients)."""
    apps: list[Flask] = []

    def make(**changes: Any) -> Flask:
        app = create_app(settings_copy(base, **changes))
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            app.extensions[EXTENSION].close()
