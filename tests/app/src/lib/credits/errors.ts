// Stub of the app's `@/lib/credits/errors`: the enum from the generated client, and the error
// `deductCredits` throws when its own balance check fails.
export { OperationType } from '@prisma/client';

export class InsufficientCreditsError extends Error {
  constructor(public readonly cost: number) {
    super(`insufficient credits: ${cost} needed`);
    this.name = 'InsufficientCreditsError';
  }
}
