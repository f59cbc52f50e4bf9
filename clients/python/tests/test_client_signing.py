"""pedro_credits signs as the service does: the shared test vectors (clients/signing-vectors.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pedro_credits.signing import sign, verify

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "signing-vectors.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['purpose']}-{v['task']}" for v in VECTORS])
def test_the_shared_vectors(vector):
    fields = (vector["purpose"], vector["service"], vector["task"], vector["task_id"], vector["text"])
    assert sign(vector["key"], *fields) == vector["signature"]
    assert verify(["another key", vector["key"]], *fields, vector["signature"])
    assert not verify(["another key"], *fields, vector["signature"])
