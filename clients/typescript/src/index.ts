/**
 * Spend, hold, refund and track Pedro AI credits through the pedro-webhooks service, from Node.js
 * (Next.js route handlers and server actions on the Node.js runtime). The contract (arguments,
 * answers, statuses, deadlines): docs/usage-api.md of the service's repository.
 */
export * from "./answers.js";
export {
  CreditsClient,
  DEBIT_WAIT_SECONDS,
  Pending,
  RESULT_KEY_PREFIX,
  SETTLE_AFTER_SECONDS,
  SETTLE_TIMEOUT_SECONDS,
  USAGE_QUEUE,
  sharedCreditsClient,
} from "./client.js";
export type {
  CallOptions,
  CaptureOptions,
  CreditsClientOptions,
  DebitOptions,
  HoldOptions,
  RecordStorageOptions,
  RefundOptions,
  StorageSelector,
} from "./client.js";
export { AnswerTimeout, CreditsConfigurationError, NoFinalAnswer } from "./errors.js";
export { PythonFloat, type JsonValue } from "./python.js";
export { queueLists, taskMessage } from "./message.js";
export { sign, verify } from "./signing.js";
