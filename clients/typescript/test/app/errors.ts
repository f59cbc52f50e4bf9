// Stand-ins for the app's '@/lib/credits/errors' (its callers catch this class by instanceof).
export type OperationType = "AI_TEXT_CHAT" | "AI_IMAGE_GENERATION" | "AI_VIDEO_GENERATION" | "SHORTS_SCRIPT" | "SHORTS_MEDIA";

export class InsufficientCreditsError extends Error {
  constructor(readonly required: number) {
    super(`insufficient credits: ${required} required`);
  }
}
