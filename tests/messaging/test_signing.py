"""The service's signing helper against the shared test vectors (clients/signing-vectors.json),
which every client's tests read too; and the keyring's rotation and refusals."""

from __future__ import annotations

import json

import pytest

from messaging.signing import ANSWER, REQUEST, Keyring, signature
from tests.support.servers import PROJECT_ROOT

VECTORS = json.loads((PROJECT_ROOT / "clients" / "signing-vectors.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['purpose']}-{v['task']}" for v in VECTORS])
def test_the_shared_vectors(vector):
    fields = (vector["purpose"], vector["service"], vector["task"], vector["task_id"], vector["text"])
    assert signature(vector["key"], *fields) == vector["signature"]
    assert Keyring({vector["service"]: ["old", vector["key"]]}).verify(*fields, vector["signature"]) == vector["key"]


def test_a_signature_binds_every_field():
    keyring = Keyring({"app": ["k1"], "other": ["k2"]})
    fields = [REQUEST, "app", "usage.debit", "id-1", '{"cost": 1}']
    signed = keyring.sign(*fields)
    assert keyring.verify(*fields, signed) == "k1"
    for n, changed in enumerate([ANSWER, "other", "usage.refund", "id-2", '{"cost": 2}']):
        assert keyring.verify(*fields[:n], changed, *fields[n + 1 :], signed) is None, changed
    assert keyring.verify(*fields, signed[:-1] + ("A" if signed[-1] != "A" else "B")) is None
    assert Keyring({}).verify(*fields, signed) is None


def test_rotation_signs_with_the_newest_and_verifies_every_key():
    old, new = Keyring({"app": ["old"]}), Keyring({"app": ["new", "old"]})
    fields = (REQUEST, "app", "usage.debit", "id", "{}")
    assert new.verify(*fields, old.sign(*fields)) == "old"
    assert new.sign(*fields) == signature("new", *fields)
    assert new.sign(*fields, key="old") == old.sign(*fields)
