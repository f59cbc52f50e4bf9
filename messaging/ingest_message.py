"""The `webhooks.ingest` message: a verified delivery the receiver could not store (PostgreSQL was
down), handed to the workers through Redis. Signed (messaging.signing, as service `receiver`)
with INGEST_SIGNING_KEY, which only the receiver and the workers hold, unlike REDIS_URL: a worker
stores nothing whose signature does not verify. Rotation: comma-separated, newest first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from messaging.celery_config import INGEST_WEBHOOK_TASK
from messaging.signing import REQUEST, Keyring
from models.settings import ConfigError

SERVICE = "receiver"
FIELDS = ("source", "external_id", "event_type", "payload")


class ForgedIngestMessage(Exception):
    """The message was not signed with any configured key (or is not an ingest message at all)."""


class IngestSigner:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError(
                "configuration error: INGEST_SIGNING_KEY is not set (the receiver and the workers need the same key)"
            )
        self._keyring = Keyring({SERVICE: keys})

    def message(self, task_id: str, delivery: dict[str, Any]) -> dict[str, str]:
        """The task's kwargs carrying `delivery`, signed for the task id it is sent with."""
        text = json.dumps({name: delivery[name] for name in FIELDS})
        signed = self._keyring.sign(REQUEST, SERVICE, INGEST_WEBHOOK_TASK, task_id, text)
        return {"service": SERVICE, "request": text, "signature": signed}

    def open(self, task_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The delivery a genuine message carries, or `ForgedIngestMessage`."""
        service, text, signed = (kwargs.get(name) for name in ("service", "request", "signature"))
        if set(kwargs) != {"service", "request", "signature"} or service != SERVICE:
            raise ForgedIngestMessage("not a signed ingest message")
        if not isinstance(text, str) or not isinstance(signed, str):
            raise ForgedIngestMessage("not a signed ingest message")
        if self._keyring.verify(REQUEST, SERVICE, INGEST_WEBHOOK_TASK, task_id, text, signed) is None:
            raise ForgedIngestMessage("the signature does not verify with any configured key")
        delivery = json.loads(text)
        if not isinstance(delivery, dict) or set(delivery) != set(FIELDS):
            raise ForgedIngestMessage("the signed message is not a delivery")
        return delivery
