"""Signatures of usage messages and answers, as the pedro-webhooks service makes them: HMAC-SHA256
over `purpose \\n service \\n task \\n task id \\n JSON text`, base64url without padding
(itsdangerous, no key derivation). Test vectors: clients/signing-vectors.json; the wire format:
docs/usage-api.md."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from itsdangerous import Signer

REQUEST, ANSWER = "request", "answer"


def canonical(purpose: str, service: str, task: str, task_id: str, text: str) -> bytes:
    return "\n".join((purpose, service, task, task_id, text)).encode()


def _signer(key: str) -> Signer:
    return Signer(key, key_derivation="none", digest_method=hashlib.sha256)


def sign(key: str, purpose: str, service: str, task: str, task_id: str, text: str) -> str:
    return _signer(key).get_signature(canonical(purpose, service, task, task_id, text)).decode()


def verify(keys: Sequence[str], purpose: str, service: str, task: str, task_id: str, text: str, signed: str) -> bool:
    value = canonical(purpose, service, task, task_id, text)
    return any(_signer(key).verify_signature(value, signed.encode()) for key in keys)
