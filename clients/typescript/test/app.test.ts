// The app's deductCredits replaced one for one (test/app/deduct-credits.ts, shown in
// docs/usage-api.md): the same result, the same InsufficientCreditsError, one payment per key.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, test } from "node:test";

import { sharedCreditsClient } from "@pedro-ai/credits";

import { CreditsNotTakenError, deductCredits } from "./app/deduct-credits.js";
import { InsufficientCreditsError } from "./app/errors.js";
import { user } from "./support.js";

after(() => sharedCreditsClient().close());

test("deductCredits through the service: its result, its InsufficientCreditsError, one payment per key", async () => {
  const { clerk_user_id, credits } = user("app");
  const generation = `gen:${randomUUID()}`;
  const first = await deductCredits(clerk_user_id, "AI_TEXT_CHAT", 3, { model: "gpt" }, generation);
  assert.deepEqual(first, { success: true, remaining: credits - 3 });
  // The same request retried pays nothing more.
  assert.deepEqual(await deductCredits(clerk_user_id, "AI_TEXT_CHAT", 3, { model: "gpt" }, generation), first);
  await assert.rejects(deductCredits(clerk_user_id, "AI_TEXT_CHAT", 3, { model: "gpt" }), (error: unknown) => {
    assert.ok(error instanceof InsufficientCreditsError);
    assert.equal(error.required, 3);
    return true;
  });
  // The same key for another cost is a conflict: nothing taken, and not "insufficient".
  await assert.rejects(deductCredits(clerk_user_id, "AI_TEXT_CHAT", 1, { model: "gpt" }, generation), CreditsNotTakenError);
  assert.equal(sharedCreditsClient(), sharedCreditsClient(), "one client per process");
});
