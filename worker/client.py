"""The client other services use to spend credits and track uploads: tasks sent by name.

It imports no task code and needs only the Redis URL (broker and result backend):

    from worker.client import UsageClient

    usage = UsageClient("redis://redis:6379/0")
    result = usage.debit("user_2abc", "AI_IMAGE_GENERATION", idempotency_key=f"gen:{generation_id}", wait=30)
    try:
        answer = result.get(timeout=30)   # the same budget: {"status": "applied", "remaining": 90, ...}
    except (celery.exceptions.TimeoutError, celery.exceptions.TaskRevokedError):
        answer = {"status": "expired"}    # not applied by the deadline: it never will be

A debit carries a deadline, `wait` seconds from now (default DEBIT_WAIT_SECONDS): the task kwarg
`not_after` and the message's `expires`. Past it the worker takes nothing and stores `expired`
on the key, whether the task runs late (a backlog, a retry waiting for the user) or Celery
discards the expired message unrun (`.get()` then raises `TaskRevokedError`). Wait for the answer
with the same budget: when it does not come in time, the debit did not and will not apply; the
stored answer for the key (`outcome(key)`) says `expired`, or, if the worker was taking it in
the very moment the wait ended, `applied` (refund it then).

Every call returns a Celery `AsyncResult`; its value (JSON) is:
- `debit` / `refund`: `{"status", "remaining", "usage_id"}`. Debit statuses: `applied`, `expired`,
  `duplicate` (the key was seen: the stored `remaining`/`usage_id`, and `original_status`),
  `insufficient_credits` (nothing taken; `"reason": "inactive_user"` for a deleted user),
  `unknown_user` (after waiting about `wait_for_user` s for the Clerk webhook), `conflict` (the
  key was used with other arguments). Refund statuses: `applied`, `duplicate`, `conflict`,
  `unknown_debit`, `over_refund` (with `refundable`). Mistakes answer `"status": "error"` with an
  `error` code (`unknown_operation`, `invalid_cost`, `invalid_credits`, `unknown_cost`) and
  store nothing, so the key may be sent again.
- `record_storage`: `{"status": "recorded"|"duplicate"|"updated"|"unknown_user", "storage_object_id"}`.
- `delete_storage`: `{"status": "deleted"|"already_deleted"|"not_found", "storage_object_id", "deleted_at"}`.
- `outcome(key)`: the answer stored for a debit/refund key (the authoritative record, kept in
  PostgreSQL; the Redis result expires after a day), or `{"status": "unknown", ...}`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from pydantic import SecretStr

from models.settings import Settings
from worker.celery_config import create_producer

# How long a caller waits for a debit by default: its deadline, and the `.get(timeout=...)` to use.
DEBIT_WAIT_SECONDS = 30.0


def producer_for(redis_url: str) -> Celery:
    """A send-only Celery app for a service that knows only the Redis URL."""
    # model_construct: a producer reads nothing but the Redis URL, so skip requiring the rest.
    settings = Settings.model_construct(database_url=SecretStr(""), redis_url=SecretStr(redis_url))
    return create_producer(settings)


class UsageClient:
    def __init__(self, broker: str | Settings | Celery) -> None:
        if isinstance(broker, Celery):
            self.app = broker
        elif isinstance(broker, Settings):
            self.app = create_producer(broker)
        else:
            self.app = producer_for(broker)

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
        """Spend credits. `operation`: an OperationType name (or member); `cost`: None to use the
        configured cost (plan override, else AdminSettings.featureCosts); `wait`: the seconds
        the caller will wait for the answer (`.get(timeout=wait)`), after which nothing may be
        taken: the task's `not_after` and the message's `expires`."""
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
        return self._send("usage.debit", kwargs, options, expires=datetime.fromtimestamp(not_after, UTC))

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
        return self._send("usage.refund", kwargs, options)

    def outcome(self, idempotency_key: str) -> AsyncResult[dict[str, Any]]:
        return self._send("usage.outcome", {"idempotency_key": idempotency_key}, {})

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
        return self._send("storage.record", kwargs, {})

    def delete_storage(
        self, storage_object_id: str | None = None, pathname: str | None = None, provider: str = "vercel_blob"
    ) -> AsyncResult[dict[str, Any]]:
        kwargs = {"storage_object_id": storage_object_id, "pathname": pathname, "provider": provider}
        return self._send("storage.delete", kwargs, {})

    def _send(
        self, name: str, kwargs: dict[str, Any], options: dict[str, Any], expires: datetime | None = None
    ) -> AsyncResult[dict[str, Any]]:
        """`options`: extra task kwargs the tasks accept (`wait_for_user`, in seconds)."""
        return self.app.send_task(name, kwargs={**kwargs, **options}, expires=expires)

    def close(self) -> None:
        self.app.close()
