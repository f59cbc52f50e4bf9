/** What the client throws (never "not applied" from a timeout: docs/usage-api.md, "The client"). */

/** No signed answer came within `wait` for a call without a deadline (refund, storage,
 * outcome): it says nothing about the outcome; the worker applies it when it gets to it. */
export class AnswerTimeout extends Error {
  override name = "AnswerTimeout";
  constructor(
    readonly task: string,
    readonly taskId: string,
    wait: number,
  ) {
    super(`no answer to ${task} ${taskId} within ${wait} s`);
  }
}

/** A deadline passed and the service could not be asked what became of the request (its
 * workers or Redis are down): it was applied before the deadline, or never will be.
 * `outcome(idempotencyKey)` answers once the service is back. */
export class NoFinalAnswer extends Error {
  override name = "NoFinalAnswer";
  constructor(
    readonly task: string,
    readonly taskId: string,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(`${task} ${taskId}: ${reason}`, options);
  }
}

/** REDIS_URL, the service's name or its key is missing or malformed. */
export class CreditsConfigurationError extends Error {
  override name = "CreditsConfigurationError";
}

/** The Edge runtime (and browsers) cannot open the TCP connections Redis needs. */
export const NODE_RUNTIME_ONLY =
  "@pedro-ai/credits needs the Node.js runtime (it opens TCP connections to Redis): in a Next.js " +
  "route handler or server action, add `export const runtime = 'nodejs'`";
