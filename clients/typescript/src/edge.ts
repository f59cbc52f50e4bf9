/**
 * What the Edge runtime gets (the package's `edge-light` export): the same names, and a clear
 * error instead of a failed TCP connection. Use the Node.js runtime (`export const runtime =
 * 'nodejs'`) for the route handlers and server actions that spend credits.
 */
import { CreditsConfigurationError, NODE_RUNTIME_ONLY } from "./errors.js";

export * from "./answers.js";
export { AnswerTimeout, CreditsConfigurationError, NoFinalAnswer } from "./errors.js";

export class CreditsClient {
  constructor() {
    throw new CreditsConfigurationError(NODE_RUNTIME_ONLY);
  }

  static fromEnvironment(): never {
    throw new CreditsConfigurationError(NODE_RUNTIME_ONLY);
  }
}

export function sharedCreditsClient(): never {
  throw new CreditsConfigurationError(NODE_RUNTIME_ONLY);
}
