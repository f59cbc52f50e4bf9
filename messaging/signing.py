"""The one signing helper of every message that crosses Redis: usage requests and answers, and the
receiver's ingest message. An HMAC-SHA256 (itsdangerous, no key derivation, base64url without
padding) over a canonical text any language builds: purpose, service, task name, task id and the
message's JSON text, joined by newlines. Test vectors: clients/signing-vectors.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from itsdangerous import Signer

REQUEST, ANSWER = "request", "answer"


def canonical(purpose: str, service: str, task: str, task_id: str, text: str) -> bytes:
    """What is signed. `text` is the message's JSON exactly as sent: no canonical JSON needed."""
    return "\n".join((purpose, service, task, task_id, text)).encode()


def _signer(key: str) -> Signer:
    return Signer(key, key_derivation="none", digest_method=hashlib.sha256)


def signature(key: str, purpose: str, service: str, task: str, task_id: str, text: str) -> str:
    return _signer(key).get_signature(canonical(purpose, service, task, task_id, text)).decode()


class Keyring:
    """Each service's keys, newest first (several during a rotation: every one verifies)."""

    def __init__(self, keys: Mapping[str, Sequence[str]]) -> None:
        self._keys = {service: list(found) for service, found in keys.items() if found}

    @property
    def services(self) -> list[str]:
        return sorted(self._keys)

    def sign(self, purpose: str, service: str, task: str, task_id: str, text: str, key: str | None = None) -> str:
        """Signed with `key` (e.g. the one that verified the request), else the service's newest."""
        return signature(key or self._keys[service][0], purpose, service, task, task_id, text)

    def verify(self, purpose: str, service: str, task: str, task_id: str, text: str, signed: str) -> str | None:
        """The key that made `signed`, or None (unknown service, or no key of it matches)."""
        value = canonical(purpose, service, task, task_id, text)
        for key in self._keys.get(service, ()):
            if _signer(key).verify_signature(value, signed.encode()):
                return key
        return None
