/**
 * The answers of the usage and storage tasks, typed as the worker stores them (JSON, snake_case
 * as on the wire): a discriminated union on `status` per call. What each status means:
 * docs/usage-api.md ("Statuses") of the service's repository.
 */

/** Codes of `status: "error"` answers (a mistake: nothing was stored; fix it and send again). */
export type ErrorCode =
  | "unknown_operation"
  | "invalid_cost"
  | "unknown_cost"
  | "invalid_request"
  | "invalid_credits"
  | "invalid_arguments"
  | (string & {});

export interface ErrorAnswer {
  status: "error";
  error: ErrorCode;
  detail?: string;
  remaining?: null;
  usage_id?: null;
}

interface NothingTaken {
  remaining: null;
  usage_id: null;
}

/** The operations the app's `OperationType` enum names (any other answers `unknown_operation`). */
export type OperationType =
  | "AI_TEXT_CHAT"
  | "AI_IMAGE_GENERATION"
  | "AI_VIDEO_GENERATION"
  | "SHORTS_SCRIPT"
  | "SHORTS_MEDIA"
  | (string & {});

/** A debit's answer as stored on its key (what `duplicate` and `outcome` repeat). */
export type StoredDebitAnswer =
  | { status: "applied"; remaining: number; usage_id: string }
  | { status: "insufficient_credits"; remaining: number; usage_id: null; reason?: "inactive_user" }
  | ({ status: "unknown_user" } & NothingTaken)
  | ({ status: "expired" } & NothingTaken);

export type DebitAnswer =
  | StoredDebitAnswer
  | (Omit<StoredDebitAnswer, "status"> & {
      status: "duplicate";
      original_status: StoredDebitAnswer["status"];
      remaining: number | null;
      usage_id: string | null;
      reason?: "inactive_user";
    })
  | ({ status: "conflict"; error: string } & NothingTaken)
  | ErrorAnswer;

export type StoredRefundAnswer =
  | { status: "applied"; remaining: number; usage_id: string }
  | ({ status: "over_refund"; refundable: number } & NothingTaken)
  | ({ status: "unknown_debit" } & NothingTaken);

export type RefundAnswer =
  | StoredRefundAnswer
  | {
      status: "duplicate";
      original_status: StoredRefundAnswer["status"];
      remaining: number | null;
      usage_id: string | null;
      refundable?: number;
    }
  | ({ status: "conflict"; error: string } & NothingTaken)
  | ErrorAnswer;

/** A hold's answer as stored on its key: `expires_at` is an ISO 8601 UTC time. */
export type StoredHoldAnswer =
  | { status: "held"; remaining: number; usage_id: null; credits: number; expires_at: string }
  | { status: "insufficient_credits"; remaining: number; usage_id: null; reason?: "inactive_user" }
  | ({ status: "unknown_user" } & NothingTaken)
  | ({ status: "expired" } & NothingTaken);

export type HoldAnswer =
  | StoredHoldAnswer
  | {
      status: "duplicate";
      original_status: StoredHoldAnswer["status"];
      remaining: number | null;
      usage_id: null;
      credits?: number;
      expires_at?: string;
    }
  | ({ status: "conflict"; error: string } & NothingTaken)
  | ErrorAnswer;

/** How a hold ended; every later capture or release of it answers the same. */
export type HoldEnd =
  | { status: "captured"; remaining: number | null; usage_id: string; credits: number; released: number }
  | { status: "released"; remaining: number; usage_id: null; released: number }
  | { status: "expired"; remaining: number; usage_id: null; released: number };

export type CaptureAnswer =
  | HoldEnd
  | { status: "over_capture"; remaining: null; usage_id: null; held: number }
  | ({ status: "unknown_hold" } & NothingTaken)
  | ErrorAnswer;

export type ReleaseAnswer = HoldEnd | ({ status: "unknown_hold" } & NothingTaken) | ErrorAnswer;

/** What the service holds for one of this service's keys. */
export type OutcomeAnswer =
  | (StoredDebitAnswer & { kind: "debit" })
  | (StoredRefundAnswer & { kind: "refund" })
  | (StoredHoldAnswer & { kind: "hold" })
  | ({ status: "unknown" } & NothingTaken)
  | ErrorAnswer;

export type RecordStorageAnswer =
  | { status: "recorded" | "duplicate" | "updated"; storage_object_id: string }
  | { status: "unknown_user"; storage_object_id: null }
  | ErrorAnswer;

export type DeleteStorageAnswer =
  | { status: "deleted" | "already_deleted"; storage_object_id: string; deleted_at: string }
  | { status: "not_found"; storage_object_id: null; deleted_at: null }
  | ErrorAnswer;

/** Whether a hold's answer means its credits are held for this key (now or before). */
export function holdHeld(answer: HoldAnswer): boolean {
  return answer.status === "held" || (answer.status === "duplicate" && answer.original_status === "held");
}

/** Whether a debit's answer means the credits were taken for this key (now or before). */
export function debitApplied(answer: DebitAnswer): boolean {
  return answer.status === "applied" || (answer.status === "duplicate" && answer.original_status === "applied");
}
