/**
 * Signatures of usage messages and answers, as the pedro-webhooks service makes them:
 * HMAC-SHA256 with the key (UTF-8) over UTF-8 `purpose \n service \n task \n task id \n JSON text`,
 * base64url without padding. Test vectors: clients/signing-vectors.json; the wire format:
 * docs/usage-api.md ("Signed messages").
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export type Purpose = "request" | "answer";

export function canonical(purpose: Purpose, service: string, task: string, taskId: string, text: string): string {
  return [purpose, service, task, taskId, text].join("\n");
}

export function sign(key: string, purpose: Purpose, service: string, task: string, taskId: string, text: string): string {
  return createHmac("sha256", key).update(canonical(purpose, service, task, taskId, text)).digest("base64url");
}

/** Whether `signature` was made by one of `keys` (a rotation: any of them) for these fields. */
export function verify(
  keys: readonly string[],
  purpose: Purpose,
  service: string,
  task: string,
  taskId: string,
  text: string,
  signature: string,
): boolean {
  const given = Buffer.from(signature);
  return keys.some((key) => {
    const made = Buffer.from(sign(key, purpose, service, task, taskId, text));
    return made.length === given.length && timingSafeEqual(made, given);
  });
}
