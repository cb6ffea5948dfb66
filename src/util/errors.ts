/**
 * An error meant for the user: it names the problem and, where there is one, the rule.
 * `code` is stable for scripts; `status` is what the API answers with.
 */
export class VmhostError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
    this.name = "VmhostError";
  }
}

export function notFound(what: string): VmhostError {
  return new VmhostError("not-found", `${what} not found`, 404);
}
