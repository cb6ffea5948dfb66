import { VmhostError } from "../util/errors.js";

const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * VM (and switch) names become directory names, so they must not be able to escape one:
 * 1-64 of A-Za-z0-9._-, not "." or "..", and not starting with "-" (it would read as a flag).
 */
export function validateName(name: string, what = "VM name"): string {
  if (!NAME_RE.test(name)) {
    throw new VmhostError(
      "invalid-name",
      `${what} ${JSON.stringify(name)} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -`,
    );
  }
  if (name === "." || name === "..") {
    throw new VmhostError("invalid-name", `${what} ${JSON.stringify(name)} is invalid: it would name a directory link`);
  }
  if (name.startsWith("-")) {
    throw new VmhostError("invalid-name", `${what} ${JSON.stringify(name)} is invalid: it must not start with "-"`);
  }
  return name;
}

export function isValidName(name: string): boolean {
  try {
    validateName(name);
    return true;
  } catch {
    return false;
  }
}
