/** An error reply of vmhostd: `code` is stable for scripts, `rule` names the rule that refused (HTTP 422). */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
    readonly rule?: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** The error of a reply body `{ error: { code, message, rule? } }`, or a generic one naming the status. */
export function errorFromBody(status: number, body: unknown): ApiError {
  const e = (body as { error?: { code?: unknown; message?: unknown; rule?: unknown } } | null)?.error;
  if (e && typeof e.code === "string" && typeof e.message === "string") return new ApiError(e.code, e.message, status, typeof e.rule === "string" ? e.rule : undefined);
  return new ApiError("error", `vmhostd answered ${status}`, status);
}
