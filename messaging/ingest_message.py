"""The `webhooks.ingest` message: a verified delivery the receiver could not store (PostgreSQL was
down), handed to the workers through Redis, signed.

The receiver signs it with INGEST_SIGNING_KEY, which only it and the workers hold, and a worker
stores nothing whose signature does not verify: every service that sends usage tasks holds
REDIS_URL. itsdangerous' signature (HMAC-SHA256), no timestamp. The key is comma-separated,
newest first: the first signs, every key verifies. Why: docs/design.md ("Trust boundaries").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from itsdangerous import BadSignature, Serializer

from models.settings import ConfigError

SALT = "pedro-webhooks.webhooks.ingest"
FIELDS = ("source", "external_id", "event_type", "payload")


class ForgedIngestMessage(Exception):
    """The message was not signed with any configured key (or is not an ingest message at all)."""


class IngestSigner:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError(
                "configuration error: INGEST_SIGNING_KEY is not set (the receiver and the workers need the same key)"
            )
        # itsdangerous signs with the last key of its list and accepts them all; ours is newest first.
        self._serializer = Serializer(list(reversed(keys)), salt=SALT, signer_kwargs={"digest_method": hashlib.sha256})

    def sign(self, delivery: dict[str, Any]) -> str:
        return self._serializer.dumps({name: delivery[name] for name in FIELDS})

    def open(self, signed: object) -> dict[str, Any]:
        """The delivery a genuine message carries, or `ForgedIngestMessage`."""
        if not isinstance(signed, str):
            raise ForgedIngestMessage("not a signed ingest message")
        try:
            delivery = self._serializer.loads(signed)
        except BadSignature:
            raise ForgedIngestMessage("the signature does not verify with any configured key") from None
        if not isinstance(delivery, dict) or set(delivery) != set(FIELDS):
            raise ForgedIngestMessage("the signed message is not a delivery")
        return delivery
