/**
 * Boot-order policy, pure functions over Boot#### numbers (Hyper-V's Set-VMFirmware
 * -FirstBootDevice / -BootOrder). Hyper-V drops every entry left out of -BootOrder; here
 * entries left out move to the end unless `prune` is asked for, File entries (made by an OS
 * or a user, which nothing can recreate) are never dropped without being reported, and
 * entries the firmware would re-create at its next boot are kept rather than deleted for a
 * boot (the caller says which: see service.ts, firmwareRecreates).
 */
import { BootError } from "./errors.js";

/** `order` with `id` first and the others in their previous order. */
export function moveFirst(order: readonly number[], id: number): number[] {
  checkId(id);
  return [id, ...order.filter((x) => x !== id)];
}

export interface ApplyBootOrderOptions {
  /** Remove entries left out of `requested` (Hyper-V semantics). Default false: move them last. */
  prune?: boolean;
  /** Numbers of the File entries; pruning keeps them (at the end) unless `pruneFiles`. */
  fileEntries?: Iterable<number>;
  /** Also prune File entries left out. They are then listed in `prunedFiles`. */
  pruneFiles?: boolean;
  /** Every Boot#### that exists; a requested number outside it is an UNKNOWN_ENTRY error. */
  existing?: Iterable<number>;
  /**
   * Entries pruning must not delete, e.g. those the firmware re-creates at its next boot
   * (a deleted one would come back at the end anyway). Kept at the end, listed in `kept`.
   */
  keepOnPrune?: Iterable<number>;
}

export interface ApplyBootOrderResult {
  /** The new BootOrder. */
  readonly order: number[];
  /** Left out of `requested` and moved after it, in their previous order. */
  readonly movedToEnd: number[];
  /** Left out and removed from BootOrder; the caller deletes their Boot#### variables. */
  readonly pruned: number[];
  /** File entries left out that pruning kept (moved to the end) so they are not lost. */
  readonly keptFiles: number[];
  /** File entries left out and pruned because `pruneFiles` was set. */
  readonly prunedFiles: number[];
  /** Entries of `keepOnPrune` left out that pruning kept (moved to the end). */
  readonly kept: number[];
}

export function applyBootOrder(
  current: readonly number[], requested: readonly number[], options: ApplyBootOrderOptions = {},
): ApplyBootOrderResult {
  const seen = new Set<number>();
  for (const id of requested) {
    checkId(id);
    if (seen.has(id)) throw new BootError("DUPLICATE_ENTRY", `Boot${hex4(id)} is listed twice`);
    seen.add(id);
  }
  if (options.existing !== undefined) {
    const existing = new Set(options.existing);
    const unknown = requested.filter((id) => !existing.has(id));
    if (unknown.length > 0) throw new BootError("UNKNOWN_ENTRY", `no boot entry ${unknown.map((id) => "Boot" + hex4(id)).join(", ")}`);
  }
  const files = new Set(options.fileEntries ?? []);
  const keep = new Set(options.keepOnPrune ?? []);
  const leftOut: number[] = [];
  for (const id of current) if (!seen.has(id) && !leftOut.includes(id)) leftOut.push(id);
  const movedToEnd: number[] = [];
  const pruned: number[] = [];
  const keptFiles: number[] = [];
  const prunedFiles: number[] = [];
  const kept: number[] = [];
  const tail: number[] = [];
  for (const id of leftOut) {
    if (!options.prune) {
      movedToEnd.push(id);
      tail.push(id);
    } else if (keep.has(id)) {
      kept.push(id);
      tail.push(id);
    } else if (files.has(id) && !options.pruneFiles) {
      keptFiles.push(id);
      tail.push(id);
    } else {
      pruned.push(id);
      if (files.has(id)) prunedFiles.push(id);
    }
  }
  return { order: [...requested, ...tail], movedToEnd, pruned, keptFiles, prunedFiles, kept };
}

/** Lowest Boot#### number not in `used`, from `start` (default 0). */
export function nextFreeBootNumber(used: Iterable<number>, start = 0): number {
  const taken = new Set(used);
  for (let id = start; id <= 0xffff; id++) if (!taken.has(id)) return id;
  throw new BootError("NO_FREE_NUMBER", "all Boot#### numbers are in use");
}

/** `count` free numbers, ascending. */
export function freeBootNumbers(used: Iterable<number>, count: number, start = 0): number[] {
  const taken = new Set(used);
  const out: number[] = [];
  for (let id = start; id <= 0xffff && out.length < count; id++) if (!taken.has(id)) out.push(id);
  if (out.length < count) throw new BootError("NO_FREE_NUMBER", `only ${out.length} free Boot#### numbers`);
  return out;
}

function checkId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > 0xffff) throw new BootError("BAD_BOOT_NUMBER", `boot option number ${id} is not 0..0xFFFF`);
}

function hex4(id: number): string {
  return id.toString(16).toUpperCase().padStart(4, "0");
}
