"""`CreditsClient`: the `usage.*` and `storage.*` tasks of the pedro-webhooks workers, sent by name.

It needs only the service's Redis URL (broker and result backend) and imports nothing of the
service. Every call returns a Celery `AsyncResult` whose value is the answer described in
docs/usage-api.md, the one place the statuses are written.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from kombu import Exchange, Queue

# The queue the service's `usage` workers consume (the service's messaging.celery_config).
USAGE_QUEUE = "usage"
# How long a caller waits for a debit by default: its deadline, and the `.get(timeout=...)` to use.
DEBIT_WAIT_SECONDS = 30.0
# Answers stay in the result backend this long (the service's setting; PostgreSQL keeps them for good).
RESULT_EXPIRES_SECONDS = 24 * 3600


def producer(redis_url: str) -> Celery:
    """A send-only Celery app on the service's Redis, routing every task to the `usage` queue."""
    app = Celery("pedro_credits", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        result_expires=RESULT_EXPIRES_SECONDS,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(USAGE_QUEUE, Exchange(USAGE_QUEUE, type="direct"), routing_key=USAGE_QUEUE)],
        task_default_queue=USAGE_QUEUE,
        task_routes={"usage.*": {"queue": USAGE_QUEUE}, "storage.*": {"queue": USAGE_QUEUE}},
        broker_connection_retry_on_startup=True,
    )
    return app


class CreditsClient:
    """One per process, reused: it holds the broker and result-backend connections."""

    def __init__(self, redis_url: str) -> None:
        if not redis_url:
            raise ValueError("redis_url is empty: pass the pedro-webhooks service's REDIS_URL")
        self.app = producer(redis_url)

    def debit(
        self,
        clerk_user_id: str,
        operation: Any,
        idempotency_key: str,
        cost: int | None = None,
        details: dict[str, Any] | None = None,
        wait: float = DEBIT_WAIT_SECONDS,
        **options: Any,
    ) -> AsyncResult[dict[str, Any]]:
        """Spend credits. `operation`: an OperationType name (or an enum member); `cost`: None
        for the configured cost; `wait`: the seconds the caller waits for the answer, after
        which nothing may be taken (the task's `not_after` and the message's `expires`)."""
        if not wait > 0:
            raise ValueError("wait must be a positive number of seconds")
        not_after = time.time() + wait
        kwargs = {
            "clerk_user_id": clerk_user_id,
            "operation": getattr(operation, "value", operation),
            "idempotency_key": idempotency_key,
            "cost": cost,
            "details": details,
            "not_after": not_after,
        }
        return self._send("usage.debit", {**kwargs, **options}, expires=datetime.fromtimestamp(not_after, UTC))

    def refund(
        self,
        clerk_user_id: str,
        idempotency_key: str,
        refund_of: str,
        credits: int | None = None,
        details: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[dict[str, Any]]:
        """Give back `credits` (None: all that is left) of the debit whose key is `refund_of`."""
        kwargs = {
            "clerk_user_id": clerk_user_id,
            "idempotency_key": idempotency_key,
            "refund_of": refund_of,
            "credits": credits,
            "details": details,
        }
        return self._send("usage.refund", {**kwargs, **options})

    def outcome(self, idempotency_key: str) -> AsyncResult[dict[str, Any]]:
        """The answer PostgreSQL holds for a debit or refund key (docs/usage-api.md)."""
        return self._send("usage.outcome", {"idempotency_key": idempotency_key})

    def record_storage(
        self,
        clerk_user_id: str,
        url: str,
        pathname: str,
        name: str,
        size: int,
        content_type: str | None = None,
        provider: str = "vercel_blob",
    ) -> AsyncResult[dict[str, Any]]:
        kwargs = {
            "clerk_user_id": clerk_user_id,
            "url": url,
            "pathname": pathname,
            "name": name,
            "size": size,
            "content_type": content_type,
            "provider": provider,
        }
        return self._send("storage.record", kwargs)

    def delete_storage(
        self, storage_object_id: str | None = None, pathname: str | None = None, provider: str = "vercel_blob"
    ) -> AsyncResult[dict[str, Any]]:
        kwargs = {"storage_object_id": storage_object_id, "pathname": pathname, "provider": provider}
        return self._send("storage.delete", kwargs)

    def _send(self, name: str, kwargs: dict[str, Any], expires: datetime | None = None) -> AsyncResult[dict[str, Any]]:
        return self.app.send_task(name, kwargs=kwargs, expires=expires)

    def close(self) -> None:
        self.app.close()
