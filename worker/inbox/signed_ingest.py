"""The worker's side of the signed `webhooks.ingest` message (messaging/ingest_message.py): open it
with this process's keys (a worker without one does not start: worker/celery_app.py).

A message that does not verify is dropped (logged, nothing stored): retrying it could never
succeed, and keeping it would let anyone with access to Redis fill the queue.
"""

from __future__ import annotations

import logging
from typing import Any

from messaging.ingest_message import ForgedIngestMessage, IngestSigner
from models.settings import process_settings

log = logging.getLogger(__name__)


def open_delivery(signed_delivery: object, unsigned: dict[str, Any]) -> dict[str, Any] | None:
    """The delivery of a genuine message; None (logged) for anything else."""
    if unsigned:
        log.warning("webhooks.ingest refused: an unsigned message (fields %s)", ", ".join(sorted(unsigned)))
        return None
    try:
        return IngestSigner(process_settings().ingest_signing_keys).open(signed_delivery)
    except ForgedIngestMessage as exc:
        log.warning("webhooks.ingest refused: %s", exc)
        return None
