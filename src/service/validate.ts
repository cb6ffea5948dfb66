import type { z } from "zod";
import { VmhostError } from "../util/errors.js";

/** Validate a request body at the edge; the error names the field. */
export function parseBody<S extends z.ZodTypeAny>(schema: S, body: unknown): z.output<S> {
  const r = schema.safeParse(body ?? {});
  if (!r.success) {
    const i = r.error.issues[0];
    throw new VmhostError("bad-request", `invalid request: ${i ? `${i.path.join(".") || "body"}: ${i.message}` : "invalid"}`);
  }
  return r.data;
}

/** A route: method, path pattern (groups are URI-decoded parameters), handler. */
export type Route<M> = [string, RegExp, (m: M, params: string[], body: unknown) => Promise<unknown>];

export const NAME_GROUP = "([^/]+)";
export const vmRoute = (rest: string): RegExp => new RegExp(`^/v1/vms/${NAME_GROUP}/${rest}$`);
