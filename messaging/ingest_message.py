"""A verified delivery the receiver could not store (PostgreSQL was down), handed to the workers
through Redis: an entry of the fallback store (messaging/fallback_store.py), or the older
`webhooks.ingest` message. Signed (messaging.signing, as service `receiver`) with
INGEST_SIGNING_KEY, which only the receiver and the workers hold, unlike REDIS_URL: a worker
stores nothing whose signature does not verify. Rotation: comma-separated, newest first.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from messaging.celery_config import INGEST_WEBHOOK_TASK
from messaging.fallback_store import STREAM
from messaging.signing import REQUEST, Keyring
from models.settings import ConfigError

SERVICE = "receiver"
FIELDS = ("source", "external_id", "event_type", "payload")
_SIGNED = ("service", "request", "signature")
# An entry's own id, signed with it (in the place of a task id): a signed entry cannot be
# replayed under another id, and is never valid as a `webhooks.ingest` message (nor one as it).
ENTRY_ID = "delivery_id"


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
        return self._signed(INGEST_WEBHOOK_TASK, task_id, delivery)

    def entry(self, delivery: dict[str, Any]) -> dict[str, str]:
        """The fallback store's fields carrying `delivery`, signed for a fresh delivery id."""
        delivery_id = str(uuid.uuid4())
        return {ENTRY_ID: delivery_id, **self._signed(STREAM, delivery_id, delivery)}

    def open(self, task_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The delivery a genuine `webhooks.ingest` message carries, or `ForgedIngestMessage`."""
        return self._open(INGEST_WEBHOOK_TASK, task_id, kwargs)

    def open_entry(self, fields: dict[str, str]) -> dict[str, Any]:
        """The delivery a genuine fallback store entry carries, or `ForgedIngestMessage`."""
        signed = {name: value for name, value in fields.items() if name != ENTRY_ID}
        return self._open(STREAM, fields.get(ENTRY_ID, ""), signed)

    def _signed(self, task: str, task_id: str, delivery: dict[str, Any]) -> dict[str, str]:
        text = json.dumps({name: delivery[name] for name in FIELDS})
        signed = self._keyring.sign(REQUEST, SERVICE, task, task_id, text)
        return {"service": SERVICE, "request": text, "signature": signed}

    def _open(self, task: str, task_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        service, text, signed = (kwargs.get(name) for name in _SIGNED)
        if set(kwargs) != set(_SIGNED) or service != SERVICE:
            raise ForgedIngestMessage("not a signed ingest message")
        if not isinstance(text, str) or not isinstance(signed, str):
            raise ForgedIngestMessage("not a signed ingest message")
        if not task_id or self._keyring.verify(REQUEST, SERVICE, task, task_id, text, signed) is None:
            raise ForgedIngestMessage("the signature does not verify with any configured key")
        delivery = json.loads(text)
        if not isinstance(delivery, dict) or set(delivery) != set(FIELDS):
            raise ForgedIngestMessage("the signed message is not a delivery")
        return delivery
