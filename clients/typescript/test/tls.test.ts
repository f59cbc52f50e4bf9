// rediss:// (TLS), as managed Redis needs: a debit sent and its answer awaited over TLS, to a
// Redis of the harness's own that takes TLS on one port and plain TCP on another (no worker
// there: the test reads the message and stores the signed answer as the worker does).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { CreditsClient, RESULT_KEY_PREFIX, USAGE_QUEUE, sign, verify } from "../src/index.js";
import { connectionsNamed, looking, required } from "./support.js";

test("rediss://: the message goes and the answer comes back over TLS", async () => {
  const service = required("CREDITS_SERVICE");
  const key = required("CREDITS_SERVICE_KEY");
  const name = `pedro-credits-tls-${randomUUID()}`;
  const client = new CreditsClient({
    redisUrl: required("CREDITS_TEST_TLS_REDIS_URL"),
    service,
    key,
    connectionName: name,
    redisOptions: { socket: { tls: true, ca: readFileSync(required("CREDITS_TEST_TLS_CA_FILE")) } },
  });
  const plain = await looking(required("CREDITS_TEST_TLS_PLAIN_REDIS_URL"));
  try {
    const pending = await client.sendDebit("user_tls", "AI_TEXT_CHAT", `tls-${randomUUID()}`, { cost: 1, wait: 20 });
    const waiting = pending.answer();
    const queued = await plain.rPop(USAGE_QUEUE);
    assert.ok(queued, "nothing was queued over TLS");
    const envelope = JSON.parse(queued) as { body: string; headers: { id: string; task: string } };
    const kwargs = (JSON.parse(Buffer.from(envelope.body, "base64").toString()) as [[], Record<string, string>])[1];
    assert.equal(envelope.headers.id, pending.taskId);
    assert.ok(verify([key], "request", service, "usage.debit", pending.taskId, kwargs.request ?? "", kwargs.signature ?? ""));

    const text = JSON.stringify({ status: "applied", remaining: 9, usage_id: "cmx0000000000000000000002" });
    const result = { service, answer: text, signature: sign(key, "answer", service, "usage.debit", pending.taskId, text) };
    const meta = JSON.stringify({ status: "SUCCESS", result, traceback: null, children: [], task_id: pending.taskId });
    await plain.set(RESULT_KEY_PREFIX + pending.taskId, meta);
    await plain.publish(RESULT_KEY_PREFIX + pending.taskId, meta);
    assert.deepEqual(await waiting, JSON.parse(text));
    assert.deepEqual((await connectionsNamed(plain, name)).sort(), [name, `${name}:answers`]);
  } finally {
    await client.close();
    await plain.close();
  }
});
