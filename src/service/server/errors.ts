import { ZodError } from "zod";
import { RuleError } from "../../model/rules.js";
import { VmhostError } from "../../util/errors.js";
import { toVmhostError } from "../integration.js";

/** The body of every error reply: a stable code for scripts, a message for people, the rule when one refused. */
export interface ErrorBody {
  error: { code: string; message: string; rule?: string };
}

/**
 * THE one place where an error becomes an HTTP reply. VmhostError carries its status and code;
 * RuleError is 422 with the rule's name; the guest layer's errors are mapped by
 * integration.ts's toVmhostError; zod errors are 400 naming the field; Fastify's own errors
 * (a bad URL, a body that is not JSON, one too large) keep their 4xx status. Anything else is a
 * 500 whose message is logged by the caller.
 */
export function httpError(err: unknown): { status: number; body: ErrorBody; internal: boolean } {
  const e = toVmhostError(err);
  if (e instanceof RuleError) return { status: 422, body: { error: { code: e.code, message: e.message, rule: e.rule } }, internal: false };
  if (e instanceof VmhostError) return { status: e.status, body: { error: { code: e.code, message: e.message } }, internal: e.status >= 500 };
  if (e instanceof ZodError) return { status: 400, body: { error: { code: "bad-request", message: zodMessage(e) } }, internal: false };
  const f = e as { statusCode?: number; code?: string; message?: string };
  if (typeof f.statusCode === "number" && f.statusCode >= 400 && f.statusCode < 500) {
    return { status: f.statusCode, body: { error: { code: fastifyCode(f.code), message: f.message ?? "bad request" } }, internal: false };
  }
  return { status: 500, body: { error: { code: "internal", message: (e as Error)?.message ?? String(e) } }, internal: true };
}

/** The first issue of a zod error, naming where it is: `body.memoryMiB: Expected number, received string`. */
export function zodMessage(e: ZodError, where?: string): string {
  const i = e.issues[0];
  if (!i) return "invalid request";
  const path = [where, ...i.path.map(String)].filter((x) => x !== undefined && x !== "").join(".");
  return `invalid request: ${path || "body"}: ${i.message}`;
}

function fastifyCode(code: string | undefined): string {
  switch (code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return "too-large";
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return "unsupported-media-type";
    case "FST_ERR_NOT_FOUND":
      return "not-found";
    default:
      return "bad-request";
  }
}
