// The app's deductCredits through the service: docs/usage-api.md shows this file from
// `export class` on (tests/clients/test_typescript_client.py keeps the two the same). The app
// imports the errors from '@/lib/credits/errors'; this test, from its stand-ins.
import { randomUUID } from 'node:crypto';

import { sharedCreditsClient } from '@pedro-ai/credits';

import { InsufficientCreditsError, type OperationType } from './errors.js';

export class CreditsNotTakenError extends Error {
  override name = 'CreditsNotTakenError';
}

// NoFinalAnswer (the service is down) passes through: whether it was taken is not known yet.
export async function deductCredits(
  clerkUserId: string, // auth().userId in a route handler: the service knows users by their Clerk id
  operation: OperationType,
  cost: number,
  details: Record<string, any>,
  idempotencyKey: string = randomUUID(), // pass one (e.g. the generation's id): a retry then pays once
): Promise<{ success: true; remaining: number }> {
  const answer = await sharedCreditsClient().debit(clerkUserId, operation, idempotencyKey, { cost, details });
  switch (answer.status) {
    case 'applied':
      return { success: true, remaining: answer.remaining };
    case 'insufficient_credits':
      throw new InsufficientCreditsError(cost);
    case 'duplicate':
      if (answer.original_status === 'applied') return { success: true, remaining: answer.remaining ?? 0 };
      if (answer.original_status === 'insufficient_credits') throw new InsufficientCreditsError(cost);
      throw new CreditsNotTakenError(`${idempotencyKey}: ${answer.original_status}`);
    default: // unknown_user, expired, conflict, error: nothing was taken
      throw new CreditsNotTakenError(`${idempotencyKey}: ${answer.status}`);
  }
}
