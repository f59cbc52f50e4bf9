// What the service tests share: the environment the Python harness sets, its users, plain
// Redis clients to look at what the client leaves behind.
import { readFileSync } from "node:fs";

import { createClient } from "@redis/client";

import type { Redis } from "../src/answer-board.js";

export interface TestUser {
  clerk_user_id: string;
  credits: number;
}

export const USERS = (
  JSON.parse(readFileSync(new URL("../../test/users.json", import.meta.url), "utf8")) as {
    users: Record<string, TestUser>;
  }
).users;

export function user(role: string): TestUser {
  const found = USERS[role];
  if (found === undefined) throw new Error(`no user ${role} in test/users.json`);
  return found;
}

export function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through \`npm test\` (tests/support/typescript_client.py)`);
  return value;
}

/** A plain Redis connection for a test to look with (closed by the caller). */
export async function looking(url: string): Promise<Redis> {
  const client = createClient({ url, RESP: 2 }) as unknown as Redis;
  client.on("error", () => {});
  await client.connect();
  return client;
}

/** Connections named `name` (CLIENT SETNAME) open on the server. */
export async function connectionsNamed(redis: Redis, name: string): Promise<string[]> {
  const list = await redis.sendCommand(["CLIENT", "LIST"]);
  return String(list)
    .split("\n")
    .map((line) => /\bname=(\S*)/.exec(line)?.[1] ?? "")
    .filter((found) => found === name || found.startsWith(`${name}:`));
}

export async function subscribers(redis: Redis, channel: string): Promise<number> {
  const reply = (await redis.sendCommand(["PUBSUB", "NUMSUB", channel])) as [string, number];
  return Number(reply[1]);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}
