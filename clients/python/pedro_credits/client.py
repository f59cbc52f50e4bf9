"""`CreditsClient`: the pedro-webhooks usage tasks, sent by name as signed messages, and their
signed answers awaited on the Redis result backend. The contract (arguments, answers, statuses,
the final-answer rule): docs/usage-api.md of the service's repository.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery
from kombu import Exchange, Queue

from pedro_credits.answers import AnswerWaiter
from pedro_credits.signing import ANSWER, REQUEST, sign, verify

# The queue the service's `usage` workers consume (the service's messaging.celery_config).
USAGE_QUEUE = "usage"
# How long a caller waits for a debit by default: its deadline (`not_after`, `expires`).
DEBIT_WAIT_SECONDS = 30.0
# After a deadline, how long an answer the worker is storing may take before the client settles.
SETTLE_AFTER_SECONDS = 1.0
# How long `usage.settle` may take to answer (it waits for the usage queue's backlog).
SETTLE_TIMEOUT_SECONDS = 30.0
RESULT_KEY_PREFIX = "celery-task-meta-"  # Celery's Redis result backend


class AnswerTimeout(TimeoutError):
    """No signed answer came in time. For a refund or a storage record this says nothing about
    the outcome: it is applied when the worker gets to it (`outcome(key)` tells later)."""


class NoFinalAnswer(TimeoutError):
    """A debit's deadline passed and the service could not be asked what became of it (its
    workers are down): it was applied before the deadline, or never will be. `outcome(key)`
    answers once the service is back."""


def producer(redis_url: str) -> Celery:
    """A send-only Celery app on the service's Redis, routing every task to the `usage` queue."""
    app = Celery("pedro_credits", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(USAGE_QUEUE, Exchange(USAGE_QUEUE, type="direct"), routing_key=USAGE_QUEUE)],
        task_default_queue=USAGE_QUEUE,
        task_routes={"usage.*": {"queue": USAGE_QUEUE}, "storage.*": {"queue": USAGE_QUEUE}},
        broker_connection_retry_on_startup=True,
    )
    return app


@dataclass
class Pending:
    """A sent request; `answer()` waits for its final answer."""

    client: CreditsClient
    task: str
    task_id: str
    fields: dict[str, str]
    not_after: float | None  # a debit's deadline (Unix time)
    wait: float
    sent_at: float = field(default_factory=time.monotonic)

    def poll(self) -> dict[str, Any] | None:
        """Its signed answer if one is stored already (one read; never the final-answer rule)."""
        return self.client.stored_answer(self.task, self.task_id)

    def answer(self) -> dict[str, Any]:
        """The final answer. A debit: its signed answer by its deadline, else what the service
        settles for its key (`usage.settle`: what PostgreSQL holds, or `expired` once nothing
        can apply any more); never "not applied" from a timeout alone."""
        if self.not_after is None:
            found = self.client.wait_for_answer(self.task, self.task_id, self.sent_at + self.wait)
            if found is None:
                raise AnswerTimeout(f"no answer to {self.task} {self.task_id} within {self.wait} s")
            return found
        until = time.monotonic() + max(self.not_after - time.time(), 0) + SETTLE_AFTER_SECONDS
        found = self.client.wait_for_answer(self.task, self.task_id, until)
        if found is not None:
            return found
        self.client.settle(self)
        found = self.client.wait_for_answer(self.task, self.task_id, time.monotonic() + self.client.settle_timeout)
        if found is None:
            raise NoFinalAnswer(f"{self.task} {self.task_id}: the service did not settle it in time")
        return found


class CreditsClient:
    """One per process, reused across requests. `service` and `key`: the service's name and key
    in the workers' USAGE_SERVICE_KEYS (a list of keys during a rotation: the first signs)."""

    def __init__(
        self,
        redis_url: str,
        service: str,
        key: str | Sequence[str],
        *,
        settle_timeout: float = SETTLE_TIMEOUT_SECONDS,
    ) -> None:
        keys = [key] if isinstance(key, str) else list(key)
        if not redis_url:
            raise ValueError("redis_url is empty: pass the pedro-webhooks service's REDIS_URL")
        if not service or not keys or not all(keys):
            raise ValueError("service and key are required: the name and key the service knows (USAGE_SERVICE_KEYS)")
        self.service, self._keys, self.settle_timeout = service, keys, settle_timeout
        self.app = producer(redis_url)
        self._results = redis.Redis.from_url(redis_url, socket_timeout=10, health_check_interval=30)
        self._answers = AnswerWaiter(self._results)

    @classmethod
    def from_environment(cls) -> CreditsClient:
        """From REDIS_URL, CREDITS_SERVICE and CREDITS_SERVICE_KEY (a ValueError names a missing one)."""
        values = {name: os.environ.get(name, "") for name in ("REDIS_URL", "CREDITS_SERVICE", "CREDITS_SERVICE_KEY")}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise ValueError(f"{', '.join(missing)} not set")
        return cls(values["REDIS_URL"], values["CREDITS_SERVICE"], values["CREDITS_SERVICE_KEY"].split(","))

    # --- Final answers ----------------------------------------------------------------------

    def debit(self, clerk_user_id: str, operation: Any, idempotency_key: str, **options: Any) -> dict[str, Any]:
        """Spend credits; the final answer (`send_debit` for the options)."""
        return self.send_debit(clerk_user_id, operation, idempotency_key, **options).answer()

    def refund(self, clerk_user_id: str, idempotency_key: str, refund_of: str, **options: Any) -> dict[str, Any]:
        return self.send_refund(clerk_user_id, idempotency_key, refund_of, **options).answer()

    def hold(self, clerk_user_id: str, operation: Any, idempotency_key: str, **options: Any) -> dict[str, Any]:
        """Reserve credits; the final answer (`send_hold` for the options)."""
        return self.send_hold(clerk_user_id, operation, idempotency_key, **options).answer()

    def capture(self, idempotency_key: str, credits: int, **options: Any) -> dict[str, Any]:
        """End the hold `idempotency_key` with what the work cost (`send_capture`)."""
        return self.send_capture(idempotency_key, credits, **options).answer()

    def release(self, idempotency_key: str, wait: float = 30.0) -> dict[str, Any]:
        """End the hold `idempotency_key`, giving it all back."""
        return self.send_release(idempotency_key, wait=wait).answer()

    def outcome(self, idempotency_key: str, wait: float = 10.0) -> dict[str, Any]:
        """What PostgreSQL holds for a key of this service (`unknown` if nothing)."""
        return self._send("usage.outcome", {"idempotency_key": idempotency_key}, wait=wait).answer()

    def record_storage(self, clerk_user_id: str, url: str, pathname: str, name: str, size: int, **options: Any) -> dict:
        return self.send_record_storage(clerk_user_id, url, pathname, name, size, **options).answer()

    def delete_storage(self, **selector: Any) -> dict[str, Any]:
        return self.send_delete_storage(**selector).answer()

    # --- Sending without waiting ------------------------------------------------------------

    def send_debit(
        self,
        clerk_user_id: str,
        operation: Any,
        idempotency_key: str,
        cost: int | None = None,
        details: dict[str, Any] | None = None,
        wait: float = DEBIT_WAIT_SECONDS,
        wait_for_user: float | None = None,
    ) -> Pending:
        """`operation`: an OperationType name (or an enum member); `cost`: None for the
        configured cost; `wait`: seconds the caller waits, after which nothing may be taken."""
        args = {"cost": cost, "details": details}
        return self._send_by_deadline(
            "usage.debit", clerk_user_id, operation, idempotency_key, args, wait, wait_for_user
        )

    def send_refund(
        self,
        clerk_user_id: str,
        idempotency_key: str,
        refund_of: str,
        credits: int | None = None,
        details: dict[str, Any] | None = None,
        wait: float = 30.0,
    ) -> Pending:
        """Give back `credits` (None: all that is left) of the debit whose key is `refund_of`."""
        args = {
            "clerk_user_id": clerk_user_id,
            "idempotency_key": idempotency_key,
            "refund_of": refund_of,
            "credits": credits,
            "details": details,
        }
        return self._send("usage.refund", args, wait=wait)

    def send_hold(
        self,
        clerk_user_id: str,
        operation: Any,
        idempotency_key: str,
        credits: int | None = None,
        expires_in: float = 900.0,
        wait: float = DEBIT_WAIT_SECONDS,
        wait_for_user: float | None = None,
    ) -> Pending:
        """Hold `credits` (None: the operation's cost) for at most `expires_in` seconds; `wait`
        is the caller's deadline, as a debit's."""
        args = {"credits": credits, "expires_in": float(expires_in)}  # always a float, as every client sends it
        return self._send_by_deadline(
            "usage.hold", clerk_user_id, operation, idempotency_key, args, wait, wait_for_user
        )

    def send_capture(
        self, idempotency_key: str, credits: int, details: dict[str, Any] | None = None, wait: float = 30.0
    ) -> Pending:
        """Book `credits` of the hold (at most what it holds) and give the rest back."""
        args = {"idempotency_key": idempotency_key, "credits": credits, "details": details}
        return self._send("usage.capture", args, wait=wait)

    def send_release(self, idempotency_key: str, wait: float = 30.0) -> Pending:
        return self._send("usage.release", {"idempotency_key": idempotency_key}, wait=wait)

    def send_record_storage(
        self,
        clerk_user_id: str,
        url: str,
        pathname: str,
        name: str,
        size: int,
        content_type: str | None = None,
        provider: str = "vercel_blob",
        wait: float = 30.0,
    ) -> Pending:
        """Record an upload (a `StorageObject` row), idempotent on (provider, pathname)."""
        args = {"clerk_user_id": clerk_user_id, "url": url, "pathname": pathname, "name": name, "size": size}
        args.update(content_type=content_type, provider=provider)
        return self._send("storage.record", args, wait=wait)

    def send_delete_storage(
        self,
        storage_object_id: str | None = None,
        pathname: str | None = None,
        provider: str = "vercel_blob",
        wait: float = 30.0,
    ) -> Pending:
        """Soft-delete a `StorageObject`, by its id or by pathname."""
        args = {"storage_object_id": storage_object_id, "pathname": pathname, "provider": provider}
        return self._send("storage.delete", args, wait=wait)

    # --- The wire ---------------------------------------------------------------------------

    def _send_by_deadline(
        self,
        task: str,
        clerk_user_id: str,
        operation: Any,
        idempotency_key: str,
        args: dict[str, Any],
        wait: float,
        wait_for_user: float | None,
    ) -> Pending:
        """A request with the caller's deadline, `wait` seconds from now: `not_after` and the
        message's `expires` (a debit, a hold)."""
        if not wait > 0:
            raise ValueError("wait must be a positive number of seconds")
        not_after = time.time() + wait
        request = {
            "clerk_user_id": clerk_user_id,
            "operation": getattr(operation, "value", operation),
            "idempotency_key": idempotency_key,
            **args,
            "not_after": not_after,
        }
        if wait_for_user is not None:
            request["wait_for_user"] = wait_for_user
        return self._send(task, request, wait=wait, not_after=not_after)

    def _send(self, task: str, args: dict[str, Any], *, wait: float, not_after: float | None = None) -> Pending:
        task_id = str(uuid.uuid4())
        text = json.dumps(args)
        fields = {"service": self.service, "request": text, "signature": self._sign(REQUEST, task, task_id, text)}
        expires = datetime.fromtimestamp(not_after, UTC) if not_after is not None else None
        self.app.send_task(task, kwargs=fields, task_id=task_id, expires=expires, ignore_result=True)
        return Pending(self, task, task_id, fields, not_after, wait)

    def settle(self, pending: Pending) -> None:
        """Ask the service for a deadline-bound request's final answer, to its own task id."""
        kwargs = {"task": pending.task, "task_id": pending.task_id, **pending.fields}
        self.app.send_task("usage.settle", kwargs=kwargs, ignore_result=True)

    def _sign(self, purpose: str, task: str, task_id: str, text: str) -> str:
        return sign(self._keys[0], purpose, self.service, task, task_id, text)

    def wait_for_answer(self, task: str, task_id: str, until: float) -> dict[str, Any] | None:
        """The signed answer stored for `task_id`, waited for until `until` (time.monotonic()):
        anything that does not verify is ignored (`AnswerWaiter.wait`)."""
        return self._answers.wait(RESULT_KEY_PREFIX + task_id, until, lambda raw: self._open(task, task_id, raw))

    def stored_answer(self, task: str, task_id: str) -> dict[str, Any] | None:
        return self._open(task, task_id, self._results.get(RESULT_KEY_PREFIX + task_id))

    def _open(self, task: str, task_id: str, raw: bytes | str | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
            result = meta["result"] if meta.get("status") == "SUCCESS" else {}
            text, signed = result["answer"], result["signature"]
            if result.get("service") != self.service:
                return None
        except (ValueError, KeyError, TypeError):
            return None
        if not verify(self._keys, ANSWER, self.service, task, task_id, text, signed):
            return None
        answer: dict[str, Any] = json.loads(text)
        return answer

    def close(self) -> None:
        self.app.close()
        self._answers.close()
        self._results.close()  # and every thread's subscriber: they are the pool's connections
