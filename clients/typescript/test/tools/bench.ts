// Debit (or, with BENCH_KIND=hold, hold) round trips from this client (bench/bench_ts_client.py runs it beside the Python
// client's, against one worker): `in flight` loops, each sending one debit and awaiting its
// answer, `count` round trips in all; prints {"latencies_ms": [...], "statuses": {...}} as JSON.
import { CreditsClient } from "../../src/index.js";

const [inFlight = 1, count = 200] = process.argv.slice(2).map(Number);
const users = (process.env.BENCH_USERS ?? "").split(",").filter(Boolean);
const prefix = process.env.BENCH_PREFIX ?? `ts-${Date.now()}`;
const kind = process.env.BENCH_KIND === "hold" ? "hold" : "debit";
if (users.length === 0) throw new Error("BENCH_USERS is not set");

const client = CreditsClient.fromEnvironment();
const latencies: number[] = [];
const statuses: Record<string, number> = {};
try {
  // Connected and subscribed once before the clock runs, as a long-lived server's client is.
  await client.debit(users[0] as string, "AI_TEXT_CHAT", `${prefix}-warm`, { cost: 1 });
  const perLoop = Math.floor(count / inFlight);
  await Promise.all(
    Array.from({ length: inFlight }, async (_, loop) => {
      for (let n = 0; n < perLoop; n += 1) {
        const user = users[(loop * perLoop + n) % users.length] as string;
        const started = performance.now();
        const key = `${prefix}-${loop}-${n}`;
        const answer =
          kind === "hold"
            ? await client.hold(user, "AI_TEXT_CHAT", key, { credits: 1, expiresIn: 600 })
            : await client.debit(user, "AI_TEXT_CHAT", key, { cost: 1 });
        latencies.push(performance.now() - started);
        statuses[answer.status] = (statuses[answer.status] ?? 0) + 1;
      }
    }),
  );
} finally {
  await client.close();
}
process.stdout.write(`${JSON.stringify({ latencies_ms: latencies, statuses })}\n`);
