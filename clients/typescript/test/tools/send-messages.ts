// Makes the calls of test/message-calls.json with this client on REDIS_URL (no worker there)
// and exits: tests/clients/test_typescript_client.py compares what it queued with what the
// Python client's Celery `send_task` queues for the same calls. `settle`: a debit whose
// deadline passes unanswered, so the client sends `usage.settle` for it.
import { readFileSync } from "node:fs";

import { CreditsClient, NoFinalAnswer, type JsonValue, type StorageSelector } from "../../src/index.js";

interface Call {
  call: string;
  args: (string | number)[];
  options: Record<string, JsonValue>;
}

const { calls } = JSON.parse(readFileSync(new URL("../../../test/message-calls.json", import.meta.url), "utf8")) as {
  calls: Call[];
};
const camel = (name: string): string => name.replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase());
const options = (call: Call): Record<string, JsonValue> =>
  Object.fromEntries(Object.entries(call.options).map(([name, value]) => [camel(name), value]));

const client = CreditsClient.fromEnvironment(process.env, { settleTimeout: 0.05 });
try {
  for (const call of calls) {
    const [a, b, c, d, e] = call.args as [string, string, string, string, number];
    switch (call.call) {
      case "debit":
        await client.sendDebit(a, b, c, options(call));
        break;
      case "refund":
        await client.sendRefund(a, b, c, options(call));
        break;
      case "hold":
        await client.sendHold(a, b, c, options(call));
        break;
      case "capture":
        await client.sendCapture(a, Number(b), options(call));
        break;
      case "release":
        await client.sendRelease(a, options(call));
        break;
      case "outcome":
        await client.sendOutcome(a, options(call));
        break;
      case "record_storage":
        await client.sendRecordStorage(a, b, c, d, e, options(call));
        break;
      case "delete_storage": {
        const { storageObjectId, pathname, ...rest } = options(call);
        const selector = (storageObjectId ? { storageObjectId } : { pathname }) as StorageSelector;
        await client.sendDeleteStorage(selector, rest);
        break;
      }
      case "settle": {
        const pending = await client.sendDebit(a, b, c, { ...options(call), wait: 0.01 });
        await pending.answer().then(
          () => Promise.reject(new Error("an answer came from a Redis no worker reads")),
          (error: unknown) => (error instanceof NoFinalAnswer ? undefined : Promise.reject(error)),
        );
        break;
      }
      default:
        throw new Error(`unknown call ${call.call}`);
    }
  }
} finally {
  await client.close();
}
