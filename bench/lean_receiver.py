"""The lean receiver: the honest minimum a Clerk delivery costs, the ceiling bench_receiver.py
measures the receiver against (BENCHMARKS.md, baselines).

A plain WSGI callable served by gunicorn with the receiver's own settings. Per request: a Svix
verify on the raw bytes, the event type read from the body, one `INSERT ... ON CONFLICT
(source, external_id) DO NOTHING RETURNING id` into the same inbox table in autocommit (plain
psycopg, one connection per worker), one Redis LPUSH of a small message. No ORM, no Celery, no
metrics, no logging, no framework. Reads DATABASE_URL, REDIS_URL, CLERK_WEBHOOK_SIGNING_SECRET
and SERVICE_SCHEMA (default `ingest`) from the environment, as the receiver does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import redis
from psycopg import sql
from svix.webhooks import Webhook, WebhookVerificationError

QUEUE_KEY = "lean-receiver"
_HEADERS = (
    ("svix-id", "HTTP_SVIX_ID"),
    ("svix-timestamp", "HTTP_SVIX_TIMESTAMP"),
    ("svix-signature", "HTTP_SVIX_SIGNATURE"),
)


class _Worker:
    """What one gunicorn worker holds; built on its first request, i.e. after the fork."""

    def __init__(self) -> None:
        url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
        self.connection = psycopg.connect(url, autocommit=True)
        self.redis = redis.Redis.from_url(os.environ["REDIS_URL"])
        self.webhook = Webhook(os.environ["CLERK_WEBHOOK_SIGNING_SECRET"].split(",")[0])
        self.insert = sql.SQL(
            "INSERT INTO {}.webhook_inbox (source, external_id, event_type, payload) "
            "VALUES ('clerk', %s, %s, %s::jsonb) "
            "ON CONFLICT (source, external_id) DO NOTHING RETURNING id"
        ).format(sql.Identifier(os.environ.get("SERVICE_SCHEMA", "ingest")))

    def receive(self, environ: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {name: environ.get(key, "") for name, key in _HEADERS}
        try:
            self.webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError):
            return "401 Unauthorized", {"error": "bad_signature"}
        text = body.decode("utf-8")
        event_type = json.loads(text)["type"]
        with self.connection.cursor() as cursor:
            # synchronous_commit is on: the row is durable when the statement returns.
            row = cursor.execute(self.insert, (headers["svix-id"], event_type, text)).fetchone()
        if row is None:
            return "200 OK", {"status": "duplicate"}
        self.redis.lpush(QUEUE_KEY, json.dumps({"inbox_id": row[0]}))
        return "200 OK", {"status": "accepted", "inbox_id": row[0]}


_worker: _Worker | None = None


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global _worker
    if environ["PATH_INFO"] == "/healthz":
        status, answer = "200 OK", {"status": "ok"}
    else:
        if _worker is None:
            _worker = _Worker()
        status, answer = _worker.receive(environ)
    payload = json.dumps(answer).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]
