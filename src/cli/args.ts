import { parseArgs, type ParseArgsConfig } from "node:util";
import { VmhostError } from "../util/errors.js";

/** Shared command-line plumbing for every CLI command file. */

export type Values = Record<string, string | boolean | undefined>;

/** parseArgs with `--json` always allowed and usage errors as VmhostError("usage"). */
export function args(argv: string[], options: ParseArgsConfig["options"] = {}): { values: Values; positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options: { json: { type: "boolean" }, ...options }, allowPositionals: true, strict: true });
    return { values: r.values as Values, positionals: r.positionals };
  } catch (err) {
    throw new VmhostError("usage", (err as Error).message.replace(/^TypeError \[.*?\]: /, ""));
  }
}

export function need(positionals: string[], i: number, what: string): string {
  const v = positionals[i];
  if (v === undefined) throw new VmhostError("usage", `missing ${what}`);
  return v;
}

export function int(v: string | boolean | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !/^\d+$/.test(v)) throw new VmhostError("usage", `${what} must be a whole number (got ${JSON.stringify(v)})`);
  return Number(v);
}

export const enc = encodeURIComponent;

/** JSON for --json, else the human form. */
export function out(json: boolean, data: unknown, human: () => void): void {
  if (json) process.stdout.write(JSON.stringify(data, null, 2) + "\n");
  else human();
}
