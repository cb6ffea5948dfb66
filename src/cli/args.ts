import { VmhostError } from "../util/errors.js";
import { parseSize } from "../util/size.js";

/** Parsers of option values shared by the command files; usage errors are VmhostError("usage"). */

export function int(v: string | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new VmhostError("usage", `${what} must be a whole number (got ${JSON.stringify(v)})`);
  return Number(v);
}

/** Memory: a bare number means MiB (as Hyper-V Manager shows it); units are binary. */
export function memoryMiB(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (/^\d+$/.test(v)) return Number(v);
  let bytes: number;
  try {
    bytes = parseSize(v);
  } catch (err) {
    throw new VmhostError("usage", `--memory: ${(err as Error).message}`);
  }
  if (bytes % (1024 * 1024) !== 0) throw new VmhostError("usage", `--memory ${v} is not a whole number of MiB`);
  return bytes / (1024 * 1024);
}

export type Format = "vhdx" | "vhd" | "qcow2" | "raw";

export function diskFormat(v: string | undefined, what: string): Format | undefined {
  if (v === undefined) return undefined;
  if (v !== "vhdx" && v !== "vhd" && v !== "qcow2" && v !== "raw") throw new VmhostError("usage", `${what} must be vhdx, vhd, qcow2 or raw (got ${JSON.stringify(v)})`);
  return v;
}

export function newDiskSpec(v: string): { sizeBytes: number; format: Format } {
  const [size = "", fmt = "vhdx"] = v.split(":");
  const format = diskFormat(fmt, "the new disk's format")!;
  try {
    return { sizeBytes: parseSize(size), format };
  } catch (err) {
    throw new VmhostError("usage", `new disk size: ${(err as Error).message}`);
  }
}

export function onOff(v: string | undefined, what: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (/^(on|true|yes|1)$/i.test(v)) return true;
  if (/^(off|false|no|0)$/i.test(v)) return false;
  throw new VmhostError("usage", `${what} must be on or off (got "${v}")`);
}

export function list(v: string | undefined): string[] | undefined {
  return v === undefined ? undefined : v.split(",").map((x) => x.trim()).filter((x) => x.length > 0);
}

/** JSON for --json, else the human form. */
export function out(json: boolean | undefined, data: unknown, human: () => void): void {
  if (json) process.stdout.write(JSON.stringify(data, null, 2) + "\n");
  else human();
}
