"""Signed usage messages: a request is opened only when a key of the service it names made its
signature (messaging.signing); its answer is signed with that same key for the task id it
answers. A message that does not verify is refused: nothing written, logged with the service it
claimed, counted in Redis (REFUSED_USAGE_MESSAGES) for the metrics exporter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis
import structlog

from messaging.celery_config import REFUSED_USAGE_MESSAGES
from messaging.signing import ANSWER, REQUEST, Keyring
from models.settings import process_settings

log = structlog.get_logger(__name__)

MESSAGE_FIELDS = ("service", "request", "signature")


@dataclass(frozen=True)
class UsageMessage:
    """A verified request: who sent it, for which task and id, and its arguments."""

    service: str
    task: str
    task_id: str
    args: dict[str, Any]
    key: str  # the key that verified it: its answer is signed with it
    text: str  # the request's JSON as sent
    signature: str

    def fields(self) -> dict[str, str]:
        """The message's own kwargs (to re-send it, or to hand it to `usage.settle`)."""
        return {"service": self.service, "request": self.text, "signature": self.signature}


class Refused(Exception):
    """The message does not verify: `reason` says why (never a key)."""


@cache
def keyring() -> Keyring:
    return Keyring(process_settings().usage_keys)


def open_message(task: str, task_id: str, kwargs: dict[str, Any]) -> UsageMessage:
    """The verified request carried by `kwargs`, or `Refused`."""
    service, text, signed = (kwargs.get(name) for name in MESSAGE_FIELDS)
    if not all(isinstance(value, str) for value in (service, text, signed)):
        raise Refused("not a signed usage message (service, request, signature)")
    assert isinstance(service, str) and isinstance(text, str) and isinstance(signed, str)
    key = keyring().verify(REQUEST, service, task, task_id, text, signed)
    if key is None:
        raise Refused("the signature does not verify with any key of the service it names")
    try:
        args = json.loads(text)
    except ValueError:
        raise Refused("the signed request is not JSON") from None
    if not isinstance(args, dict):
        raise Refused("the signed request is not a JSON object")
    return UsageMessage(service, task, task_id, args, key, text, signed)


def refuse(task: str, task_id: str, kwargs: dict[str, Any], reason: str) -> None:
    """Log and count a message that did not verify (nothing else is done with it)."""
    claimed = kwargs.get("service")
    service = claimed if isinstance(claimed, str) and len(claimed) <= 100 else "?"
    log.warning("usage.refused", task=task, task_id=task_id, service=service, reason=reason)
    try:
        _redis().hincrby(REFUSED_USAGE_MESSAGES, service, 1)
    except redis.RedisError as exc:
        log.error("usage.refusal_not_counted", error=type(exc).__name__)


def signed_answer(message: UsageMessage, answer: dict[str, Any]) -> dict[str, str]:
    """What is stored as the task's result: the answer's JSON and its signature."""
    text = json.dumps(answer)
    signed = keyring().sign(ANSWER, message.service, message.task, message.task_id, text, key=message.key)
    return {"service": message.service, "answer": text, "signature": signed}


def is_signed_answer(message: UsageMessage, result: Any) -> bool:
    """Whether `result` (what the backend holds for the message's task id) is an answer signed
    for it: one the workers stored, not one written by someone else with the Redis URL."""
    if not isinstance(result, dict) or result.get("service") != message.service:
        return False
    text, signed = result.get("answer"), result.get("signature")
    if not isinstance(text, str) or not isinstance(signed, str):
        return False
    return keyring().verify(ANSWER, message.service, message.task, message.task_id, text, signed) is not None


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(process_settings().redis_url.get_secret_value(), socket_timeout=2)
