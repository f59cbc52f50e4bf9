// The client signs as the service does: the shared test vectors every client's tests read.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { sign, verify, type Purpose } from "../src/signing.js";

interface Vector {
  key: string;
  purpose: Purpose;
  service: string;
  task: string;
  task_id: string;
  text: string;
  signature: string;
}

const VECTORS = (
  JSON.parse(readFileSync(new URL("../../../signing-vectors.json", import.meta.url), "utf8")) as { vectors: Vector[] }
).vectors;

test("there are vectors to check", () => {
  assert.ok(VECTORS.length >= 5);
});

for (const vector of VECTORS) {
  test(`the shared vector ${vector.purpose} ${vector.task} (${vector.service})`, () => {
    const fields = [vector.purpose, vector.service, vector.task, vector.task_id, vector.text] as const;
    assert.equal(sign(vector.key, ...fields), vector.signature);
    assert.ok(verify(["another key", vector.key], ...fields, vector.signature));
    assert.ok(!verify(["another key"], ...fields, vector.signature));
    assert.ok(!verify([vector.key], ...fields, vector.signature.slice(0, -1)));
    assert.ok(!verify([vector.key], vector.purpose, vector.service, vector.task, "another id", vector.text, vector.signature));
  });
}
