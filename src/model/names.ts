import { VmhostError } from "../util/errors.js";

/** Hyper-V's limit on a VM's name (New-VM / Rename-VM take 1-100 characters). */
export const VM_NAME_MAX = 100;

/**
 * Characters a name may not hold: controls (Cc), lone surrogates (Cs), unassigned code points
 * (Cn), line and paragraph separators (Zl, Zp), and format characters (Cf: bidirectional
 * overrides and invisible marks that make two names look alike) except the zero-width joiner
 * emoji sequences use.
 */
const FORBIDDEN = /[\p{Cc}\p{Cs}\p{Cn}\p{Zl}\p{Zp}]|(?!\u200d)\p{Cf}/u;
const EDGE_SPACE = /^[\s\p{Z}]|[\s\p{Z}]$/u;

/**
 * A VM's name as Hyper-V takes it: 1-100 characters of printable Unicode, spaces included, no
 * control or format characters, no leading or trailing white space ("Boot Order Example",
 * "Test VM"). Uniqueness (ignoring case) is a rule over all VMs (rules.ts, `vm-name-in-use`).
 * A name is only ever a property: VM folders are named by id (home/vm-home.ts).
 * Throws VmhostError("invalid-name") naming what is wrong.
 */
export function validateVmName(name: unknown): string {
  if (typeof name !== "string") throw new VmhostError("invalid-name", "a VM name must be a string");
  const bad = (why: string) => new VmhostError("invalid-name", `VM name ${JSON.stringify(name)} is invalid: ${why}`);
  const length = [...name].length;
  if (length === 0) throw bad("it is empty");
  if (length > VM_NAME_MAX) throw bad(`it has ${length} characters; at most ${VM_NAME_MAX}`);
  const m = FORBIDDEN.exec(name);
  if (m) throw bad(`it holds the control or format character U+${m[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`);
  if (EDGE_SPACE.test(name)) throw bad("it starts or ends with white space");
  return name;
}

/** The form two names are compared in: Unicode NFC, then lower case (names are unique ignoring case). */
export function nameKey(name: string): string {
  return name.normalize("NFC").toLowerCase();
}

/** True when `name` is a valid VM name. */
export function isValidVmName(name: string): boolean {
  try {
    validateVmName(name);
    return true;
  } catch {
    return false;
  }
}

/** A VM's id: a GUID (RFC 4122 text form, lower case), as Hyper-V's VMId. */
export const VM_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function isVmId(text: string): boolean {
  return VM_ID_RE.test(text);
}
