// Runs the app's own `deductCredits` (src/credits.ts, verbatim) many times at once on one user,
// as the app's request handlers would, and prints what each call ended with as one JSON line.
//
//   tsx src/race.ts   (env: DATABASE_URL, USER_ID, CALLS, COST, CONCURRENCY)
//
// It prints {"ready": true} once connected, then waits for a line on stdin before starting, so
// the test can start the service's debits at the same moment.
import * as readline from 'node:readline';
import { db } from '@/lib/db';
import { OperationType } from '@/lib/credits/errors';
import { deductCredits } from './credits';

type Outcome =
  | { ok: true; remaining: number }
  | { ok: false; errorClass: string; name: string; code?: string; cause?: unknown; message: string };

function describe(error: unknown): Outcome {
  // Prisma's errors carry `code` (P2xxx) when it knows the failure; a driver adapter's error
  // carries the database's own in `cause` (`originalCode`: the SQLSTATE, `hint`, ...).
  const e = error as { constructor?: { name?: string }; name?: string; code?: string; cause?: unknown; message?: string };
  return {
    ok: false,
    errorClass: e.constructor?.name ?? typeof error,
    name: e.name ?? '',
    code: e.code,
    cause: e.cause,
    message: e.message ?? String(error),
  };
}

async function call(userId: string, cost: number, n: number): Promise<Outcome> {
  try {
    const { remaining } = await deductCredits(userId, OperationType.AI_TEXT_CHAT, cost, { call: n });
    return { ok: true, remaining };
  } catch (error) {
    return describe(error);
  }
}

async function race(userId: string, calls: number, cost: number, concurrency: number): Promise<Outcome[]> {
  const outcomes: Outcome[] = new Array(calls);
  let next = 0;
  const lane = async () => {
    while (next < calls) {
      const n = next++;
      outcomes[n] = await call(userId, cost, n);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  return outcomes;
}

async function startSignal(): Promise<void> {
  const lines = readline.createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => lines.once('line', () => resolve()));
  lines.close();
}

async function main(): Promise<void> {
  const env = (name: string) => {
    const value = process.env[name];
    if (!value) throw new Error(`${name} is not set`);
    return value;
  };
  const [userId, calls, cost, concurrency] = [env('USER_ID'), +env('CALLS'), +env('COST'), +env('CONCURRENCY')];
  await db.$queryRaw`SELECT 1`; // connected before the start, so the race starts at once
  console.log(JSON.stringify({ ready: true }));
  await startSignal();
  const started = Date.now();
  const outcomes = await race(userId, calls, cost, concurrency);
  console.log(JSON.stringify({ seconds: (Date.now() - started) / 1000, outcomes }));
}

main()
  .catch((error) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(() => db.$disconnect());
