// The client against a real worker (started by tests/support/typescript_client.py or the
// pytest session): every answer the contract names, the final-answer rule, forged answers,
// aborts and timeouts releasing what they held, and 200 debits racing on one balance.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import {
  CreditsClient,
  NoFinalAnswer,
  RESULT_KEY_PREFIX,
  USAGE_QUEUE,
  debitApplied,
  holdHeld,
  sign,
  type DebitAnswer,
} from "../src/index.js";
import type { Redis } from "../src/answer-board.js";
import { connectionsNamed, looking, required, sleep, subscribers, user } from "./support.js";

const REDIS_URL = required("REDIS_URL");
const IDLE_REDIS_URL = required("CREDITS_TEST_IDLE_REDIS_URL");
const SERVICE = required("CREDITS_SERVICE");
const KEY = required("CREDITS_SERVICE_KEY");
const OTHER_SERVICE = required("CREDITS_TEST_OTHER_SERVICE");
const OTHER_KEY = required("CREDITS_TEST_OTHER_SERVICE_KEY");

const key = (prefix: string): string => `ts-${prefix}-${randomUUID()}`;

let client: CreditsClient;
let redis: Redis;
let idle: Redis;

before(async () => {
  client = CreditsClient.fromEnvironment();
  redis = await looking(REDIS_URL);
  idle = await looking(IDLE_REDIS_URL);
});

after(async () => {
  await client.close();
  await redis.close();
  await idle.close();
});

describe("holds", () => {
  test("a hold of 50 for an LLM call that cost 37: captured 37, the rest back, once", async () => {
    const { clerk_user_id, credits } = user("hold");
    const chat = key("chat");
    const held = await client.hold(clerk_user_id, "AI_TEXT_CHAT", chat, { credits: 50, expiresIn: 300 });
    assert.equal(held.status, "held");
    if (held.status !== "held") return;
    assert.equal(held.remaining, credits - 50);
    assert.ok(Date.parse(held.expires_at) > Date.now() && holdHeld(held));
    assert.deepEqual(await client.hold(clerk_user_id, "AI_TEXT_CHAT", chat, { credits: 50, expiresIn: 300 }), {
      ...held,
      status: "duplicate",
      original_status: "held",
    });
    assert.deepEqual(await client.outcome(chat), { ...held, kind: "hold" });
    const captured = await client.capture(chat, 37, { details: { tokens: 3700 } });
    assert.equal(captured.status, "captured");
    if (captured.status !== "captured") return;
    assert.deepEqual([captured.credits, captured.released, captured.remaining], [37, 13, credits - 37]);
    assert.deepEqual(await client.capture(chat, 37), captured); // sent again: the same answer
    assert.deepEqual(await client.release(chat), captured); // a hold ends once
  });

  test("a release gives all back; more than held is refused; a hold the balance cannot hold takes nothing", async () => {
    const { clerk_user_id } = user("hold");
    const all = key("all");
    const held = await client.hold(clerk_user_id, "AI_TEXT_CHAT", all, { credits: 20 });
    const released = await client.release(all);
    assert.equal(released.status, "released");
    if (held.status === "held" && released.status === "released") {
      assert.equal(released.released, 20);
      assert.equal(released.remaining, held.remaining + 20);
    }
    assert.equal((await client.capture(all, 5)).status, "released");

    const over = key("over");
    await client.hold(clerk_user_id, "AI_TEXT_CHAT", over, { credits: 10 });
    assert.deepEqual(await client.capture(over, 11), { status: "over_capture", remaining: null, usage_id: null, held: 10 });
    assert.equal((await client.capture(over, 10)).status, "captured");

    const big = await client.hold(clerk_user_id, "AI_TEXT_CHAT", key("big"), { credits: 1000 });
    assert.equal(big.status, "insufficient_credits");
    assert.ok(!holdHeld(big));
  });

  test("a hold held past its deadline (its balance row locked) answers expired and holds nothing", async () => {
    const answer = await client.hold(user("locked").clerk_user_id, "AI_TEXT_CHAT", key("locked-hold"), {
      credits: 1,
      wait: 1,
    });
    assert.deepEqual(answer, { status: "expired", remaining: null, usage_id: null });
  });
});

describe("debits", () => {
  test("a debit is applied; the same key again is a duplicate of it; outcome tells it", async () => {
    const { clerk_user_id, credits } = user("debit");
    const gen = key("gen");
    const details = { model: "gpt", note: "café ☕ \"quoted\" it's", n: 1.5 };
    const first = await client.debit(clerk_user_id, "AI_TEXT_CHAT", gen, { cost: 3, details });
    assert.equal(first.status, "applied");
    assert.equal(first.remaining, credits - 3);
    assert.match(String(first.usage_id), /^c[a-z0-9]{20,}$/);
    assert.ok(debitApplied(first));

    const again = await client.debit(clerk_user_id, "AI_TEXT_CHAT", gen, { cost: 3, details });
    assert.deepEqual(again, { ...first, status: "duplicate", original_status: "applied" });
    assert.ok(debitApplied(again));
    assert.deepEqual(await client.outcome(gen), { ...first, kind: "debit" });

    const conflict = await client.debit(clerk_user_id, "AI_TEXT_CHAT", gen, { cost: 4 });
    assert.equal(conflict.status, "conflict");
    assert.ok(!debitApplied(conflict));
  });

  test("a debit the balance cannot pay takes nothing and tells the balance", async () => {
    const { clerk_user_id, credits } = user("poor");
    const answer = await client.debit(clerk_user_id, "AI_IMAGE_GENERATION", key("poor"), { cost: credits + 1 });
    assert.deepEqual(answer, { status: "insufficient_credits", remaining: credits, usage_id: null });
    assert.ok(!debitApplied(answer));
  });

  test("mistakes answer error with a code, and nothing is stored on the key", async () => {
    const wrong = key("wrong");
    const answer = await client.debit(user("poor").clerk_user_id, "NO_SUCH_OPERATION", wrong, { cost: 1 });
    assert.equal(answer.status, "error");
    if (answer.status === "error") assert.equal(answer.error, "unknown_operation");
    assert.equal((await client.outcome(wrong)).status, "unknown");
  });

  test("a debit for a user nobody created waits for the user only until its deadline: expired", async () => {
    const started = performance.now();
    const answer = await client.debit(`user_ts_nobody_${randomUUID()}`, "AI_TEXT_CHAT", key("nobody"), {
      cost: 1,
      wait: 1.5,
      waitForUser: 300,
    });
    assert.equal(answer.status, "expired");
    assert.ok(performance.now() - started >= 1400, "answered before its deadline");
  });

  test("a debit held past its deadline (its balance row locked) answers expired and takes nothing", async () => {
    const { clerk_user_id } = user("locked");
    const held = key("locked");
    const answer = await client.debit(clerk_user_id, "AI_TEXT_CHAT", held, { cost: 1, wait: 2 });
    assert.deepEqual(answer, { status: "expired", remaining: null, usage_id: null });
    assert.deepEqual(await client.outcome(held), { ...answer, kind: "debit" });
  });

  test("a debit whose deadline passed before a worker took it: the service answers expired by itself", async () => {
    const { clerk_user_id } = user("lost");
    const stale = key("stale");
    const pending = await client.sendDebit(clerk_user_id, "AI_TEXT_CHAT", stale, { cost: 1, wait: 0.001 });
    await sleep(10);
    // Waited for without the client's own settle: Celery read the message's `expires` and
    // discarded it, and the worker settled it (or ran it past its deadline: expired too).
    const answer = await client.waitForAnswer<DebitAnswer>(pending.task, pending.taskId, performance.now() + 30_000);
    assert.deepEqual(answer, { status: "expired", remaining: null, usage_id: null });
    assert.deepEqual(await client.outcome(stale), { ...answer, kind: "debit" });
  });

  test("a debit whose message was lost is settled after its deadline: expired, for good", async () => {
    class LosingClient extends CreditsClient {
      lost: string[] = [];
      protected override async enqueue(task: string, taskId: string, kwargs: Record<string, string>, expires?: number) {
        if (task === "usage.debit") this.lost.push(taskId);
        else await super.enqueue(task, taskId, kwargs, expires);
      }
    }
    const losing = new LosingClient({ redisUrl: REDIS_URL, service: SERVICE, key: KEY });
    try {
      const { clerk_user_id } = user("lost");
      const gone = key("lost");
      const answer = await losing.debit(clerk_user_id, "AI_TEXT_CHAT", gone, { cost: 1, wait: 0.5 });
      assert.equal(losing.lost.length, 1, "the debit was not lost");
      assert.deepEqual(answer, { status: "expired", remaining: null, usage_id: null });
      const again = await client.debit(clerk_user_id, "AI_TEXT_CHAT", gone, { cost: 1 });
      assert.equal(again.status, "duplicate");
      if (again.status === "duplicate") assert.equal(again.original_status, "expired");
    } finally {
      await losing.close();
    }
  });

  test("a debit whose LPUSH failed after it may have been written gets its final answer, not the error", async () => {
    class FlakyClient extends CreditsClient {
      protected override async enqueue(task: string, taskId: string, kwargs: Record<string, string>, expires?: number) {
        await super.enqueue(task, taskId, kwargs, expires);
        if (task === "usage.debit") throw new Error("Socket closed unexpectedly (after the write)");
      }
    }
    const flaky = new FlakyClient({ redisUrl: REDIS_URL, service: SERVICE, key: KEY });
    try {
      const answer = await flaky.debit(user("debit").clerk_user_id, "AI_TEXT_CHAT", key("flaky"), { cost: 1 });
      assert.equal(answer.status, "applied");
      assert.match(String(flaky.lastError?.message), /after the write/);
    } finally {
      await flaky.close();
    }
  });

  test("wait must be a positive number of seconds", async () => {
    await assert.rejects(client.debit("u", "AI_TEXT_CHAT", key("w"), { wait: 0 }), RangeError);
  });
});

describe("refunds, outcomes and storage", () => {
  test("a refund gives back part of a debit, then refuses more than is left", async () => {
    const { clerk_user_id, credits } = user("refund");
    const gen = key("refunded");
    const debit = await client.debit(clerk_user_id, "AI_VIDEO_GENERATION", gen, { cost: 10 });
    assert.equal(debit.remaining, credits - 10);
    const refund = await client.refund(clerk_user_id, `${gen}:refund`, gen, { credits: 4, details: { why: "failed" } });
    assert.equal(refund.status, "applied");
    assert.equal(refund.remaining, credits - 6);
    const more = await client.refund(clerk_user_id, `${gen}:refund-2`, gen, { credits: 7 });
    assert.equal(more.status, "over_refund");
    if (more.status === "over_refund") assert.equal(more.refundable, 6);
    const rest = await client.refund(clerk_user_id, `${gen}:refund-3`, gen);
    assert.equal(rest.status, "applied");
    assert.equal(rest.remaining, credits);
    assert.equal((await client.outcome(`${gen}:refund`)).status, "applied");
  });

  test("outcome of a key nobody sent is unknown", async () => {
    assert.deepEqual(await client.outcome(key("never")), { status: "unknown", remaining: null, usage_id: null });
  });

  test("storage: recorded, duplicate, deleted, already deleted, not found", async () => {
    const { clerk_user_id } = user("storage");
    const pathname = `/${clerk_user_id}/${randomUUID()}.png`;
    const url = `https://blob.vercel-storage.com${pathname}`;
    const recorded = await client.recordStorage(clerk_user_id, url, pathname, "image.png", 512000, {
      contentType: "image/png",
    });
    assert.equal(recorded.status, "recorded");
    const id = recorded.storage_object_id;
    assert.ok(id);
    const duplicate = await client.recordStorage(clerk_user_id, url, pathname, "image.png", 512000, {
      contentType: "image/png",
    });
    assert.deepEqual(duplicate, { status: "duplicate", storage_object_id: id });
    const deleted = await client.deleteStorage({ pathname });
    assert.equal(deleted.status, "deleted");
    assert.equal(deleted.storage_object_id, id);
    const again = await client.deleteStorage({ storageObjectId: id });
    assert.equal(again.status, "already_deleted");
    if (again.status === "already_deleted" && deleted.status === "deleted") assert.equal(again.deleted_at, deleted.deleted_at);
    const missing = await client.deleteStorage({ pathname: `/${randomUUID()}` });
    assert.deepEqual(missing, { status: "not_found", storage_object_id: null, deleted_at: null });
  });
});

describe("answers that are not the worker's", () => {
  test("forged and unsigned results in the key are refused; the worker's answer arrives", async () => {
    const forgeries: string[] = [];
    class ForgingClient extends CreditsClient {
      // Before the debit is queued, its result key already holds lies (and they are published).
      protected override async enqueue(task: string, taskId: string, kwargs: Record<string, string>, expires?: number) {
        if (task === "usage.debit") {
          const lie = JSON.stringify({ status: "insufficient_credits", remaining: 0, usage_id: null });
          const results = [
            { service: SERVICE, answer: lie, signature: sign("not the key", "answer", SERVICE, task, taskId, lie) },
            { service: OTHER_SERVICE, answer: lie, signature: sign(OTHER_KEY, "answer", OTHER_SERVICE, task, taskId, lie) },
            { service: SERVICE, answer: lie, signature: sign(KEY, "answer", SERVICE, "usage.refund", taskId, lie) },
            { service: SERVICE, answer: lie },
            lie,
          ];
          for (const result of results) {
            const meta = JSON.stringify({ status: "SUCCESS", result, traceback: null, children: [], task_id: taskId });
            forgeries.push(meta);
            await redis.set(RESULT_KEY_PREFIX + taskId, meta);
            await redis.publish(RESULT_KEY_PREFIX + taskId, meta);
          }
          const retry = JSON.stringify({ status: "RETRY", result: { exc_type: "NotYetKnown" }, task_id: taskId });
          await redis.publish(RESULT_KEY_PREFIX + taskId, retry);
        }
        await super.enqueue(task, taskId, kwargs, expires);
      }
    }
    const forging = new ForgingClient({ redisUrl: REDIS_URL, service: SERVICE, key: KEY });
    try {
      const { clerk_user_id, credits } = user("forged");
      const pending = await forging.sendDebit(clerk_user_id, "AI_TEXT_CHAT", key("forged"), { cost: 2 });
      assert.equal(await pending.poll(), null, "a stored forgery was believed");
      const answer = await pending.answer();
      assert.equal(forgeries.length, 5);
      assert.equal(answer.status, "applied");
      assert.equal(answer.remaining, credits - 2);
      assert.notEqual(await redis.get(RESULT_KEY_PREFIX + pending.taskId), forgeries.at(-1));
    } finally {
      await forging.close();
    }
  });
});

describe("a service that is down, aborts and connections", () => {
  test("no worker answers: NoFinalAnswer after the settle timeout, and nothing is left subscribed", async () => {
    const down = new CreditsClient({ redisUrl: IDLE_REDIS_URL, service: SERVICE, key: KEY, settleTimeout: 0.5 });
    try {
      const pending = await down.sendDebit(user("debit").clerk_user_id, "AI_TEXT_CHAT", key("down"), { wait: 0.3 });
      const started = performance.now();
      await assert.rejects(pending.answer(), NoFinalAnswer);
      assert.ok(performance.now() - started >= 1700, "gave up before its deadline + 1 s + the settle timeout");
      assert.deepEqual(down.waiting, { calls: 0, channels: 0 });
      assert.equal(await subscribers(idle, RESULT_KEY_PREFIX + pending.taskId), 0);
      // The debit and then usage.settle, carrying the debit's own signed message, were queued.
      const queued = (await idle.lRange(USAGE_QUEUE, 0, -1)).map((raw) => JSON.parse(raw) as { headers: { task: string } });
      assert.deepEqual(
        queued.map((message) => message.headers.task),
        ["usage.settle", "usage.debit"],
      );
    } finally {
      await down.close();
      await idle.del(USAGE_QUEUE);
    }
  });

  test("an abort ends the wait at once and releases its subscription; the debit stays sent", async () => {
    const name = `pedro-credits-test-${randomUUID()}`;
    const down = new CreditsClient({ redisUrl: IDLE_REDIS_URL, service: SERVICE, key: KEY, connectionName: name });
    try {
      const controller = new AbortController();
      const pending = await down.sendDebit(user("debit").clerk_user_id, "AI_TEXT_CHAT", key("abort"), { wait: 60 });
      const waiting = pending.answer({ signal: controller.signal });
      await sleep(200);
      assert.deepEqual(down.waiting, { calls: 1, channels: 1 });
      assert.equal(await subscribers(idle, RESULT_KEY_PREFIX + pending.taskId), 1);
      const started = performance.now();
      controller.abort();
      await assert.rejects(waiting, { name: "AbortError" });
      assert.ok(performance.now() - started < 100);
      assert.deepEqual(down.waiting, { calls: 0, channels: 0 });
      await sleep(50);
      assert.equal(await subscribers(idle, RESULT_KEY_PREFIX + pending.taskId), 0);
      assert.equal(await idle.lLen(USAGE_QUEUE), 1);

      // Aborted before it is sent: nothing is queued.
      await assert.rejects(
        down.debit(user("debit").clerk_user_id, "AI_TEXT_CHAT", key("abort-early"), { signal: AbortSignal.abort() }),
        { name: "AbortError" },
      );
      assert.equal(await idle.lLen(USAGE_QUEUE), 1);
      assert.deepEqual((await connectionsNamed(idle, name)).sort(), [name, `${name}:answers`]);
    } finally {
      await down.close();
      await idle.del(USAGE_QUEUE);
    }
    assert.deepEqual(await connectionsNamed(idle, name), [], "close() left connections open");
  });
});

describe("answers stored while nobody listened", () => {
  test("an answer stored before the wait began is read right after subscribing", async () => {
    const pending = await client.sendDebit(user("debit").clerk_user_id, "AI_TEXT_CHAT", key("early"), { cost: 1 });
    let stored = await pending.poll();
    for (let tries = 0; stored === null && tries < 300; tries += 1) stored = await sleep(20).then(() => pending.poll());
    assert.ok(stored, "the worker did not answer");
    const started = performance.now();
    assert.deepEqual(await pending.answer(), stored);
    assert.ok(performance.now() - started < 1000);
  });

  test("an answer stored while the subscriber was disconnected is read when it reconnects", async () => {
    const name = `pedro-credits-reconnect-${randomUUID()}`;
    const down = new CreditsClient({ redisUrl: IDLE_REDIS_URL, service: SERVICE, key: KEY, connectionName: name });
    try {
      const pending = await down.sendDebit(user("debit").clerk_user_id, "AI_TEXT_CHAT", key("reconnect"), { wait: 30 });
      let answered = false;
      const waiting = pending.answer().then((answer) => {
        answered = true;
        return answer;
      });
      for (let tries = 0; (await subscribers(idle, RESULT_KEY_PREFIX + pending.taskId)) === 0 && tries < 100; tries += 1) {
        await sleep(20);
      }
      // Stored without a publish (as if it was published while the connection was down).
      const text = JSON.stringify({ status: "applied", remaining: 41, usage_id: "cmx0000000000000000000001" });
      const result = { service: SERVICE, answer: text, signature: sign(KEY, "answer", SERVICE, "usage.debit", pending.taskId, text) };
      await idle.set(RESULT_KEY_PREFIX + pending.taskId, JSON.stringify({ status: "SUCCESS", result, task_id: pending.taskId }));
      await sleep(300);
      assert.equal(answered, false, "answered without a publish or a reconnect: polling?");
      const list = String(await idle.sendCommand(["CLIENT", "LIST"]));
      const id = list.split("\n").find((line) => line.includes(` name=${name}:answers `))?.match(/\bid=(\d+)/)?.[1];
      assert.ok(id, "no subscriber connection");
      await idle.sendCommand(["CLIENT", "KILL", "ID", id]);
      assert.deepEqual(await waiting, JSON.parse(text));
    } finally {
      await down.close();
      await idle.del(USAGE_QUEUE);
    }
  });
});

describe("200 debits at once", () => {
  test("200 concurrent debits of 1 on a balance of 100: 100 applied, 100 refused, over one subscriber", async () => {
    const name = `pedro-credits-race-${randomUUID()}`;
    const racing = new CreditsClient({ redisUrl: REDIS_URL, service: SERVICE, key: KEY, connectionName: name });
    try {
      const { clerk_user_id, credits } = user("race");
      const prefix = key("race");
      let most = 0;
      const watching = setInterval(() => {
        most = Math.max(most, racing.waiting.calls);
      }, 5);
      const answers: DebitAnswer[] = await Promise.all(
        Array.from({ length: 2 * credits }, (_, n) => racing.debit(clerk_user_id, "AI_TEXT_CHAT", `${prefix}-${n}`, { cost: 1 })),
      );
      clearInterval(watching);
      const applied = answers.filter((answer) => answer.status === "applied");
      const refused = answers.filter((answer) => answer.status === "insufficient_credits");
      assert.equal(applied.length, credits);
      assert.equal(refused.length, credits);
      assert.deepEqual(
        applied.map((answer) => answer.remaining).sort((a, b) => Number(a) - Number(b)),
        Array.from({ length: credits }, (_, n) => n),
      );
      assert.ok(refused.every((answer) => answer.remaining === 0));
      assert.ok(most > 20, `only ${most} calls were waiting at once`);
      assert.deepEqual((await connectionsNamed(redis, name)).sort(), [name, `${name}:answers`]);
      assert.deepEqual(racing.waiting, { calls: 0, channels: 0 });
    } finally {
      await racing.close();
    }
  });
});
