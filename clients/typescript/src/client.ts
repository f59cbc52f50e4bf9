/**
 * `CreditsClient`: the pedro-webhooks usage and storage tasks, sent by name as signed Celery
 * messages on the service's Redis, and their signed answers awaited on its result backend.
 * The same calls, arguments, answers and final-answer rule as the Python client
 * (clients/python/pedro_credits/client.py); the contract: docs/usage-api.md.
 */
import { randomUUID } from "node:crypto";

import { ClientClosedError, ClientOfflineError, TimeoutError, createClient } from "@redis/client";

import { AnswerBoard, type Redis } from "./answer-board.js";
import type {
  CaptureAnswer,
  DebitAnswer,
  DeleteStorageAnswer,
  HoldAnswer,
  OperationType,
  OutcomeAnswer,
  RecordStorageAnswer,
  RefundAnswer,
  ReleaseAnswer,
} from "./answers.js";
import { AnswerTimeout, CreditsConfigurationError, NoFinalAnswer } from "./errors.js";
import { taskMessage } from "./message.js";
import { PythonFloat, pythonJson } from "./python.js";
import { sign, verify } from "./signing.js";

/** The queue the service's `usage` workers consume. */
export const USAGE_QUEUE = "usage";
/** How long a caller waits for a debit by default (seconds): its deadline. */
export const DEBIT_WAIT_SECONDS = 30;
/** After a deadline, how long an answer the worker is storing may take before the client settles. */
export const SETTLE_AFTER_SECONDS = 1;
/** How long `usage.settle` may take to answer (it waits for the usage queue's backlog). */
export const SETTLE_TIMEOUT_SECONDS = 30;
/** Celery's Redis result backend: the key (and channel) of a task's stored result. */
export const RESULT_KEY_PREFIX = "celery-task-meta-";
export const SETTLE_TASK = "usage.settle";

export interface CreditsClientOptions {
  /** The service's REDIS_URL (broker and result backend): `redis://` or `rediss://` (TLS). */
  redisUrl: string;
  /** This service's name in the workers' USAGE_SERVICE_KEYS. */
  service: string;
  /** Its key; a list during a rotation: the first signs, every one verifies answers. */
  key: string | readonly string[];
  /** Seconds `usage.settle` may take to answer after a deadline (default 30). */
  settleTimeout?: number;
  /** Redis connection name (CLIENT SETNAME), default `pedro-credits:<service>`. */
  connectionName?: string;
  /** Passed on to node-redis's `createClient` (e.g. `socket: { ca }` for a private CA). */
  redisOptions?: Omit<Parameters<typeof createClient>[0] & object, "url" | "RESP">;
}

/** Options every call takes. `wait` is in seconds, as in the Python client. */
export interface CallOptions {
  /** Seconds to wait for the answer (a debit: its deadline, after which nothing is taken). */
  wait?: number;
  /** Stops waiting (rejects with the signal's reason); what was sent stays sent. */
  signal?: AbortSignal;
}

export interface DebitOptions extends CallOptions {
  /** Credits to take; omitted: the cost the service has configured for the operation. */
  cost?: number | null;
  /** Any JSON object (sent as Python's json.dumps writes it). */
  details?: Record<string, unknown> | null;
  /** Seconds the worker retries while the user's Clerk webhook has not created them. */
  waitForUser?: number;
}

export interface HoldOptions extends CallOptions {
  /** Credits to hold; omitted: the cost the service has configured for the operation. */
  credits?: number | null;
  /** Seconds the hold lasts at most (default 900; the service's HOLD_MAX_SECONDS caps it). */
  expiresIn?: number;
  waitForUser?: number;
}

export interface CaptureOptions extends CallOptions {
  details?: Record<string, unknown> | null;
}

export interface RefundOptions extends CallOptions {
  /** Credits to give back; omitted: all that is left of the debit. */
  credits?: number | null;
  details?: Record<string, unknown> | null;
}

export interface RecordStorageOptions extends CallOptions {
  contentType?: string | null;
  provider?: string;
}

export type StorageSelector =
  | { storageObjectId: string; pathname?: undefined }
  | { pathname: string; storageObjectId?: undefined };

interface Sent {
  task: string;
  taskId: string;
  fields: Readonly<Record<string, string>>;
  notAfter: number | undefined;
  wait: number;
  sentAt: number;
}

/** A sent request; `answer()` waits for its final answer. */
export class Pending<A> {
  readonly task: string;
  readonly taskId: string;
  /** A deadline-bound request's deadline (Unix seconds), else undefined. */
  readonly notAfter: number | undefined;
  readonly #client: CreditsClient;
  readonly #sent: Sent;

  /** @internal */
  constructor(client: CreditsClient, sent: Sent) {
    this.#client = client;
    this.#sent = sent;
    this.task = sent.task;
    this.taskId = sent.taskId;
    this.notAfter = sent.notAfter;
  }

  /** Its signed answer if one is stored already (one read; never the final-answer rule). */
  poll(): Promise<A | null> {
    return this.#client.storedAnswer<A>(this.task, this.taskId);
  }

  /**
   * The final answer. Without a deadline: the signed answer within `wait`, else AnswerTimeout.
   * With one (a debit): its signed answer by the deadline + 1 s; else the client sends
   * `usage.settle` (what PostgreSQL holds for the key, or `expired` once nothing can apply any
   * more) and waits on the same task id up to the settle timeout; else NoFinalAnswer.
   */
  async answer(options: { signal?: AbortSignal } = {}): Promise<A> {
    const { signal } = options;
    const sent = this.#sent;
    if (sent.notAfter === undefined) {
      const found = await this.#client.waitForAnswer<A>(this.task, this.taskId, sent.sentAt + sent.wait * 1000, signal);
      if (found === null) throw new AnswerTimeout(this.task, this.taskId, sent.wait);
      return found;
    }
    const left = Math.max(sent.notAfter - Date.now() / 1000, 0) + SETTLE_AFTER_SECONDS;
    const found = await this.#client.waitForAnswer<A>(this.task, this.taskId, performance.now() + left * 1000, signal);
    if (found !== null) return found;
    try {
      await this.#client.settle(sent);
    } catch (error) {
      throw new NoFinalAnswer(this.task, this.taskId, "no answer by its deadline, and usage.settle could not be sent", {
        cause: error,
      });
    }
    const until = performance.now() + this.#client.settleTimeout * 1000;
    const settled = await this.#client.waitForAnswer<A>(this.task, this.taskId, until, signal);
    if (settled === null) throw new NoFinalAnswer(this.task, this.taskId, "the service did not settle it in time");
    return settled;
  }
}

/** One per process, reused across requests; connects on first use. `close()` releases it. */
export class CreditsClient {
  readonly service: string;
  readonly settleTimeout: number;
  readonly queue = USAGE_QUEUE;
  readonly #keys: readonly string[];
  readonly #commands: Redis;
  readonly #board: AnswerBoard;
  readonly #replyTo = randomUUID();
  #connected: Promise<unknown> | undefined;
  #closed = false;
  /** The last Redis connection error (connections reconnect by themselves). */
  lastError: Error | undefined;

  constructor(options: CreditsClientOptions) {
    const { redisUrl, service, settleTimeout = SETTLE_TIMEOUT_SECONDS } = options;
    const keys = typeof options.key === "string" ? [options.key] : [...options.key];
    if (!redisUrl) throw new CreditsConfigurationError("redisUrl is empty: pass the pedro-webhooks service's REDIS_URL");
    const scheme = /^([a-z]+):\/\//i.exec(redisUrl)?.[1]?.toLowerCase();
    if (scheme !== "redis" && scheme !== "rediss") {
      throw new CreditsConfigurationError("REDIS_URL must start with redis:// or rediss:// (TLS)");
    }
    if (!service || keys.length === 0 || !keys.every(Boolean)) {
      throw new CreditsConfigurationError(
        "service and key are required: the name and key the service knows (USAGE_SERVICE_KEYS)",
      );
    }
    this.service = service;
    this.#keys = keys;
    this.settleTimeout = settleTimeout;
    const name = options.connectionName ?? `pedro-credits:${service}`;
    // RESP2, as Celery's own clients speak: every Redis and managed Redis takes it.
    this.#commands = createClient({ ...options.redisOptions, url: redisUrl, RESP: 2, name }) as unknown as Redis;
    this.#commands.on("error", this.#onError);
    this.#board = new AnswerBoard(
      () => this.#ready(),
      () => this.#commands.duplicate({ name: `${name}:answers` }) as unknown as Redis,
      this.#onError,
    );
  }

  /** From REDIS_URL, CREDITS_SERVICE and CREDITS_SERVICE_KEY (comma-separated during a
   * rotation); a CreditsConfigurationError names each one missing. */
  static fromEnvironment(
    env: Readonly<Record<string, string | undefined>> = process.env,
    options: Partial<CreditsClientOptions> = {},
  ): CreditsClient {
    const names = ["REDIS_URL", "CREDITS_SERVICE", "CREDITS_SERVICE_KEY"] as const;
    const missing = names.filter((name) => !env[name]?.trim());
    if (missing.length > 0) {
      throw new CreditsConfigurationError(
        `${missing.join(", ")} not set: the pedro-webhooks service's Redis URL, and this service's name and key in its USAGE_SERVICE_KEYS`,
      );
    }
    const keys = (env.CREDITS_SERVICE_KEY as string).split(",").map((key) => key.trim());
    return new CreditsClient({
      ...options,
      redisUrl: env.REDIS_URL as string,
      service: (env.CREDITS_SERVICE as string).trim(),
      key: keys,
    });
  }

  // --- Final answers -----------------------------------------------------------------------

  /** Spend credits; the final answer (never "not applied" from a timeout: NoFinalAnswer). */
  async debit(
    clerkUserId: string,
    operation: OperationType,
    idempotencyKey: string,
    options: DebitOptions = {},
  ): Promise<DebitAnswer> {
    return (await this.sendDebit(clerkUserId, operation, idempotencyKey, options)).answer(options);
  }

  /** Give back `credits` (all that is left by default) of the debit whose key is `refundOf`. */
  async refund(
    clerkUserId: string,
    idempotencyKey: string,
    refundOf: string,
    options: RefundOptions = {},
  ): Promise<RefundAnswer> {
    return (await this.sendRefund(clerkUserId, idempotencyKey, refundOf, options)).answer(options);
  }

  /** Reserve credits for work priced at its end; the final answer, as a debit's. */
  async hold(
    clerkUserId: string,
    operation: OperationType,
    idempotencyKey: string,
    options: HoldOptions = {},
  ): Promise<HoldAnswer> {
    return (await this.sendHold(clerkUserId, operation, idempotencyKey, options)).answer(options);
  }

  /** End the hold `idempotencyKey` with what the work cost (at most what it holds). */
  async capture(idempotencyKey: string, credits: number, options: CaptureOptions = {}): Promise<CaptureAnswer> {
    return (await this.sendCapture(idempotencyKey, credits, options)).answer(options);
  }

  /** End the hold `idempotencyKey`, giving it all back. */
  async release(idempotencyKey: string, options: CallOptions = {}): Promise<ReleaseAnswer> {
    return (await this.sendRelease(idempotencyKey, options)).answer(options);
  }

  /** What PostgreSQL holds for a key of this service (`unknown` if nothing); wait 10 s. */
  async outcome(idempotencyKey: string, options: CallOptions = {}): Promise<OutcomeAnswer> {
    return (await this.sendOutcome(idempotencyKey, options)).answer(options);
  }

  /** Record an upload (a `StorageObject` row), idempotent on (provider, pathname). */
  async recordStorage(
    clerkUserId: string,
    url: string,
    pathname: string,
    name: string,
    size: number,
    options: RecordStorageOptions = {},
  ): Promise<RecordStorageAnswer> {
    return (await this.sendRecordStorage(clerkUserId, url, pathname, name, size, options)).answer(options);
  }

  /** Soft-delete a `StorageObject`, by its id or by pathname. */
  async deleteStorage(
    selector: StorageSelector,
    options: CallOptions & { provider?: string } = {},
  ): Promise<DeleteStorageAnswer> {
    return (await this.sendDeleteStorage(selector, options)).answer(options);
  }

  // --- Sending without waiting (resolve once Redis holds the message) ------------------------

  sendDebit(
    clerkUserId: string,
    operation: OperationType,
    idempotencyKey: string,
    options: DebitOptions = {},
  ): Promise<Pending<DebitAnswer>> {
    const { cost = null, details = null } = options;
    return this.#sendByDeadline<DebitAnswer>("usage.debit", clerkUserId, operation, idempotencyKey, { cost, details }, options);
  }

  sendHold(
    clerkUserId: string,
    operation: OperationType,
    idempotencyKey: string,
    options: HoldOptions = {},
  ): Promise<Pending<HoldAnswer>> {
    const { credits = null, expiresIn = 900 } = options;
    const args = { credits, expires_in: new PythonFloat(expiresIn) };
    return this.#sendByDeadline<HoldAnswer>("usage.hold", clerkUserId, operation, idempotencyKey, args, options);
  }

  sendCapture(idempotencyKey: string, credits: number, options: CaptureOptions = {}): Promise<Pending<CaptureAnswer>> {
    const { details = null, wait = 30 } = options;
    const args = { idempotency_key: idempotencyKey, credits, details };
    return this.send<CaptureAnswer>("usage.capture", args, { wait, signal: options.signal });
  }

  sendRelease(idempotencyKey: string, options: CallOptions = {}): Promise<Pending<ReleaseAnswer>> {
    const { wait = 30 } = options;
    return this.send<ReleaseAnswer>("usage.release", { idempotency_key: idempotencyKey }, { wait, signal: options.signal });
  }

  /** A request with the caller's deadline, `wait` seconds from now (a debit, a hold). */
  #sendByDeadline<A>(
    task: string,
    clerkUserId: string,
    operation: OperationType,
    idempotencyKey: string,
    args: Record<string, unknown>,
    options: CallOptions & { waitForUser?: number },
  ): Promise<Pending<A>> {
    const { wait = DEBIT_WAIT_SECONDS, waitForUser } = options;
    const notAfter = this.#deadline(wait);
    const request: Record<string, unknown> = {
      clerk_user_id: clerkUserId,
      operation,
      idempotency_key: idempotencyKey,
      ...args,
      not_after: new PythonFloat(notAfter),
    };
    if (waitForUser !== undefined) request.wait_for_user = waitForUser;
    return this.send<A>(task, request, { wait, notAfter, signal: options.signal });
  }

  sendRefund(
    clerkUserId: string,
    idempotencyKey: string,
    refundOf: string,
    options: RefundOptions = {},
  ): Promise<Pending<RefundAnswer>> {
    const { credits = null, details = null, wait = 30 } = options;
    const args = { clerk_user_id: clerkUserId, idempotency_key: idempotencyKey, refund_of: refundOf, credits, details };
    return this.send<RefundAnswer>("usage.refund", args, { wait, signal: options.signal });
  }

  sendOutcome(idempotencyKey: string, options: CallOptions = {}): Promise<Pending<OutcomeAnswer>> {
    const { wait = 10 } = options;
    return this.send<OutcomeAnswer>("usage.outcome", { idempotency_key: idempotencyKey }, { wait, signal: options.signal });
  }

  sendRecordStorage(
    clerkUserId: string,
    url: string,
    pathname: string,
    name: string,
    size: number,
    options: RecordStorageOptions = {},
  ): Promise<Pending<RecordStorageAnswer>> {
    const { contentType = null, provider = "vercel_blob", wait = 30 } = options;
    const args = { clerk_user_id: clerkUserId, url, pathname, name, size, content_type: contentType, provider };
    return this.send<RecordStorageAnswer>("storage.record", args, { wait, signal: options.signal });
  }

  sendDeleteStorage(
    selector: StorageSelector,
    options: CallOptions & { provider?: string } = {},
  ): Promise<Pending<DeleteStorageAnswer>> {
    const { provider = "vercel_blob", wait = 30 } = options;
    const args = { storage_object_id: selector.storageObjectId ?? null, pathname: selector.pathname ?? null, provider };
    return this.send<DeleteStorageAnswer>("storage.delete", args, { wait, signal: options.signal });
  }

  // --- The wire -------------------------------------------------------------------------------

  /**
   * Sign `args` for a new task id and LPUSH the message. A call with `notAfter` is
   * deadline-bound (the message `expires` then, and its answer is settled like a debit's):
   * every call of the usage API is one line on top of this.
   */
  protected async send<A>(
    task: string,
    args: Record<string, unknown>,
    options: { wait: number; notAfter?: number; signal?: AbortSignal | undefined },
  ): Promise<Pending<A>> {
    options.signal?.throwIfAborted();
    const taskId = randomUUID();
    const text = pythonJson(args);
    const fields = { service: this.service, request: text, signature: sign(this.#keys[0] as string, "request", this.service, task, taskId, text) };
    const sent: Sent = { task, taskId, fields, notAfter: options.notAfter, wait: options.wait, sentAt: performance.now() };
    try {
      await this.enqueue(task, taskId, fields, options.notAfter);
    } catch (error) {
      // A deadline-bound request that may have reached Redis (the connection failed after the
      // LPUSH was written) is not "not sent": its final answer decides, settled after the
      // deadline. One that surely was not sent fails at once.
      if (options.notAfter === undefined || surelyNotSent(error)) throw error;
      this.#onError(error as Error);
    }
    return new Pending<A>(this, sent);
  }

  /** LPUSH one task message onto the usage queue's list (a test seam: a lost message). */
  protected async enqueue(
    task: string,
    taskId: string,
    kwargs: Readonly<Record<string, string>>,
    expires?: number,
  ): Promise<void> {
    const message = taskMessage(task, taskId, kwargs, this.queue, { expires, replyTo: this.#replyTo });
    await this.#ready().lPush(message.list, message.envelope);
  }

  /** @internal Ask the service for a deadline-bound request's final answer, to its own task id. */
  async settle(sent: Sent): Promise<void> {
    const kwargs = { task: sent.task, task_id: sent.taskId, ...sent.fields };
    await this.enqueue(SETTLE_TASK, randomUUID(), kwargs);
  }

  /** The verified answer stored for `taskId`, waited for until `untilMs` (performance.now()). */
  waitForAnswer<A>(task: string, taskId: string, untilMs: number, signal?: AbortSignal): Promise<A | null> {
    this.#ready();
    return this.#board.wait(RESULT_KEY_PREFIX + taskId, (raw) => this.#open<A>(task, taskId, raw), untilMs, signal);
  }

  async storedAnswer<A>(task: string, taskId: string): Promise<A | null> {
    const raw = await this.#ready().get(RESULT_KEY_PREFIX + taskId);
    return raw === null ? null : this.#open<A>(task, taskId, raw);
  }

  /** How many calls wait for an answer, on how many subscribed channels. */
  get waiting(): { calls: number; channels: number } {
    return this.#board.waiting;
  }

  /** Ends every wait and closes both connections. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#board.close(new Error("CreditsClient closed"));
    await closeConnection(this.#commands);
  }

  /** The answer in a stored result if it is this service's SUCCESS, signed for this task and
   * id with one of its keys; anything else (RETRY, REVOKED, unsigned, forged) is null. */
  #open<A>(task: string, taskId: string, raw: string): A | null {
    try {
      const meta = JSON.parse(raw) as { status?: unknown; result?: unknown };
      if (meta.status !== "SUCCESS" || typeof meta.result !== "object" || meta.result === null) return null;
      const { service, answer, signature } = meta.result as Record<string, unknown>;
      if (service !== this.service || typeof answer !== "string" || typeof signature !== "string") return null;
      if (!verify(this.#keys, "answer", this.service, task, taskId, answer, signature)) return null;
      return JSON.parse(answer) as A;
    } catch {
      return null;
    }
  }

  #ready(): Redis {
    if (this.#closed) throw new Error("CreditsClient closed");
    if (this.#connected === undefined) {
      // Lazily, once: commands sent while it connects (or reconnects) wait in node-redis's queue.
      this.#connected = this.#commands.connect().catch((error: Error) => {
        this.#connected = undefined;
        this.#onError(error);
      });
    }
    return this.#commands;
  }

  #deadline(wait: number): number {
    if (!(wait > 0) || !Number.isFinite(wait)) throw new RangeError("wait must be a positive number of seconds");
    return Date.now() / 1000 + wait;
  }

  readonly #onError = (error: Error): void => {
    this.lastError = error;
  };
}

/** Closes a node-redis connection: gracefully when it is up, at once when it is (re)connecting
 * (a graceful close would wait for a Redis that does not answer). */
async function closeConnection(redis: Redis): Promise<void> {
  if (redis.isReady) await redis.close();
  else if (redis.isOpen) redis.destroy();
}

/** node-redis's errors for a command it never wrote to the socket. */
function surelyNotSent(error: unknown): boolean {
  return error instanceof TimeoutError || error instanceof ClientClosedError || error instanceof ClientOfflineError;
}

/** The process's one client, from the environment (CreditsClient.fromEnvironment), kept on
 * globalThis so a Next.js dev server's module reloads reuse it. */
export function sharedCreditsClient(): CreditsClient {
  const slot = Symbol.for("@pedro-ai/credits:shared-client");
  const global = globalThis as { [slot]?: CreditsClient };
  global[slot] ??= CreditsClient.fromEnvironment();
  return global[slot];
}
