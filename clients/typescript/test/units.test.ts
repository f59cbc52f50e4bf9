// What needs no server: Python's text (json.dumps, repr, saferepr, isoformat) as python.ts
// writes it, kombu's list names, the configuration errors, the Edge runtime's stand-in.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { describe, test } from "node:test";

import { TimeoutError } from "@redis/client";

import * as edge from "../src/edge.js";
import { CreditsClient, CreditsConfigurationError, PythonFloat, queueLists, taskMessage } from "../src/index.js";
import { floatRepr, isoformatUtc, kwargsRepr, pythonJson } from "../src/python.js";

const VECTORS = JSON.parse(readFileSync(new URL("../../test/python-vectors.json", import.meta.url), "utf8")) as {
  floats: [number, string][];
  json: [unknown, string][];
  kwargs_repr: [Record<string, string>, string][];
  isoformat: [number, string][];
};

describe("Python's text", () => {
  test("repr(float)", () => {
    assert.ok(VECTORS.floats.length > 10);
    for (const [value, repr] of VECTORS.floats) {
      assert.equal(floatRepr(value), repr);
      assert.equal(pythonJson(new PythonFloat(value)), repr);
    }
    assert.throws(() => pythonJson(Number.NaN), TypeError);
  });

  test("json.dumps", () => {
    for (const [value, dumped] of VECTORS.json) assert.equal(pythonJson(value), dumped);
    assert.equal(pythonJson({ a: undefined, b: 1 }), '{"b": 1}');
    assert.equal(pythonJson({ at: new Date(0) }), '{"at": "1970-01-01T00:00:00.000Z"}');
  });

  test("Celery's saferepr of the kwargs, cut at 1024 characters", () => {
    for (const [kwargs, repr] of VECTORS.kwargs_repr) assert.equal(kwargsRepr(kwargs), repr);
  });

  test("datetime.isoformat() of a deadline", () => {
    for (const [seconds, text] of VECTORS.isoformat) assert.equal(isoformatUtc(seconds), text);
  });
});

describe("messages", () => {
  test("kombu's lists of a queue, one per priority step", () => {
    assert.deepEqual(queueLists("usage"), ["usage", "usage\x06\x163", "usage\x06\x166", "usage\x06\x169"]);
  });

  test("a message's envelope: base64 JSON body, one id, the deadline as expires", () => {
    const kwargs = { service: "s", request: '{"a": 1}', signature: "sig" };
    const message = taskMessage("usage.debit", "id-1", kwargs, "usage", { expires: 1765108830.25, replyTo: "r", now: 1765108800 });
    const envelope = JSON.parse(message.envelope) as { body: string; headers: Record<string, unknown>; properties: Record<string, unknown> };
    assert.equal(message.list, "usage");
    assert.deepEqual(JSON.parse(Buffer.from(envelope.body, "base64").toString()), [
      [],
      kwargs,
      { callbacks: null, errbacks: null, chain: null, chord: null },
    ]);
    assert.equal(envelope.headers.expires, "2025-12-07T12:00:30.250000+00:00");
    assert.equal(envelope.properties.expiration, "30250");
    assert.equal(envelope.properties.correlation_id, "id-1");
    assert.equal(envelope.headers.root_id, "id-1");
  });
});

describe("configuration", () => {
  test("a missing REDIS_URL, service or key is named, never its value", () => {
    assert.throws(() => CreditsClient.fromEnvironment({}), {
      name: "CreditsConfigurationError",
      message: /^REDIS_URL, CREDITS_SERVICE, CREDITS_SERVICE_KEY not set/,
    });
    assert.throws(
      () => CreditsClient.fromEnvironment({ REDIS_URL: "rediss://:secret@example.com:6380/0", CREDITS_SERVICE: " " }),
      (error: Error) =>
        error instanceof CreditsConfigurationError &&
        error.message.startsWith("CREDITS_SERVICE, CREDITS_SERVICE_KEY not set") &&
        !error.message.includes("secret"),
    );
  });

  test("only redis:// and rediss:// URLs, and every key non-empty", () => {
    assert.throws(() => new CreditsClient({ redisUrl: "http://example.com", service: "s", key: "k" }), /redis:\/\/ or rediss:\/\//);
    assert.throws(() => new CreditsClient({ redisUrl: "redis://127.0.0.1", service: "s", key: ["k", ""] }), CreditsConfigurationError);
    assert.throws(() => new CreditsClient({ redisUrl: "", service: "s", key: "k" }), CreditsConfigurationError);
  });

  test("it connects on its first call, not before", async () => {
    const server = createServer((socket) => socket.destroy());
    let connections = 0;
    server.on("connection", () => (connections += 1));
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    const { port } = server.address() as AddressInfo;
    const client = CreditsClient.fromEnvironment({
      REDIS_URL: `redis://127.0.0.1:${port}/0`,
      CREDITS_SERVICE: "pedro-app",
      CREDITS_SERVICE_KEY: "k1, k2",
    });
    try {
      await new Promise((done) => setTimeout(done, 300));
      assert.equal(connections, 0, "it connected before its first call");
      const sending = client.sendOutcome("k").catch((error: unknown) => error);
      for (let tries = 0; connections === 0 && tries < 100; tries += 1) await new Promise((done) => setTimeout(done, 20));
      assert.ok(connections > 0, "its first call did not connect");
      await client.close();
      assert.ok((await sending) instanceof Error);
    } finally {
      await client.close();
      server.close();
    }
  });

  test("an unreachable Redis: a debit that surely was not sent fails (node-redis's 5 s command timeout)", async () => {
    const client = new CreditsClient({ redisUrl: "redis://127.0.0.1:9/0", service: "s", key: "k" });
    const started = performance.now();
    await assert.rejects(client.debit("user_a", "AI_TEXT_CHAT", "k-1", { wait: 60 }), (error: Error) => {
      assert.ok(error instanceof TimeoutError, String(error)); // node-redis's "never sent"
      return true;
    });
    assert.ok(performance.now() - started < 15_000);
    assert.match(String(client.lastError?.message), /ECONNREFUSED/);
    assert.deepEqual(client.waiting, { calls: 0, channels: 0 });
    await client.close();
  });

  test("the Edge runtime gets a clear error instead of a failed connection", () => {
    assert.throws(() => new edge.CreditsClient(), /needs the Node.js runtime.*runtime = 'nodejs'/);
    assert.throws(() => edge.sharedCreditsClient(), CreditsConfigurationError);
    assert.equal(edge.debitApplied({ status: "applied", remaining: 1, usage_id: "c1" }), true);
  });
});
