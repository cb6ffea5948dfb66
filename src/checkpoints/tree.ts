import { readFile } from "node:fs/promises";
import { z } from "zod";
import type { VmHome } from "../home/vm-home.js";
import { DiskFormat } from "../model/schema.js";

/**
 * A VM's checkpoints as Hyper-V has them: a tree, each checkpoint a frozen moment of the VM
 * (its disks, its UEFI NVRAM, its configuration and, for Standard checkpoints of a running VM,
 * its memory and device state), and "Now", the running state, hanging under the checkpoint it
 * was last taken from or applied (Hyper-V's "Now" marker).
 *
 * Disks are external snapshots (../shared/notes/next-wave.md §1): a checkpoint owns one image per
 * disk that is never written while the checkpoint exists; whatever comes after it (a child
 * checkpoint, or Now) writes a qcow2 overlay whose backing file is that image, recorded here with
 * its absolute path and explicit format (never probed). This file records the links explicitly,
 * so merging on removal never guesses from image headers.
 *
 * Stored as `checkpoints/tree.json` in the VM's folder (VmHome.checkpointTree); written only by
 * the change transaction.
 */

/** One disk image in the tree: where it is, its format, and the image it is an overlay on. */
export const TreeDisk = z
  .object({
    /** The drive's location, "SCSI 0:0" (model/devices slotRef). */
    slot: z.string(),
    path: z.string(),
    format: DiskFormat,
    /** The image this one is a qcow2 overlay on, when the overlay was made by a checkpoint. */
    backing: z.object({ path: z.string(), format: DiskFormat }).strict().nullable(),
  })
  .strict();
export type TreeDisk = z.infer<typeof TreeDisk>;

/** Hyper-V's checkpoint types as a checkpoint records what it holds. */
export const TakenType = z.enum(["Standard", "Production"]);
export type TakenType = z.infer<typeof TakenType>;

export const Checkpoint = z
  .object({
    id: z.string().uuid(),
    name: z.string().min(1).max(100),
    /** The checkpoint this one was taken after (null: the first of its branch). */
    parentId: z.string().uuid().nullable(),
    createdAt: z.string(),
    type: TakenType,
    /** Memory and device state are kept (a Standard checkpoint of a running, paused or saved VM). */
    hasMemory: z.boolean(),
    /** The disks as they were: the images this checkpoint owns (never written while it exists). */
    disks: z.array(TreeDisk),
    /** Gen2: an NVRAM copy is kept. */
    hasNvram: z.boolean(),
  })
  .strict();
export type Checkpoint = z.infer<typeof Checkpoint>;

export const CheckpointTree = z
  .object({
    formatVersion: z.literal(1),
    checkpoints: z.array(Checkpoint),
    /** The running state: the checkpoint it descends from, and the overlays it writes. */
    now: z.object({ parentId: z.string().uuid().nullable(), disks: z.array(TreeDisk) }).strict(),
  })
  .strict();
export type CheckpointTree = z.infer<typeof CheckpointTree>;

export const EMPTY_TREE: CheckpointTree = { formatVersion: 1, checkpoints: [], now: { parentId: null, disks: [] } };

/** A node of the tree: a checkpoint, or Now. */
export type TreeNode = { kind: "checkpoint"; checkpoint: Checkpoint } | { kind: "now" };

/** The text a tree is stored as (validated). */
export function serializeTree(tree: CheckpointTree): string {
  return JSON.stringify(CheckpointTree.parse(tree), null, 2) + "\n";
}

/** Finds a checkpoint by id, or by name ignoring case (ambiguous names are refused with the ids to use). */
export function findCheckpoint(tree: CheckpointTree, ref: string): Checkpoint | undefined {
  const byId = tree.checkpoints.find((c) => c.id === ref.toLowerCase());
  if (byId) return byId;
  const named = tree.checkpoints.filter((c) => c.name.toLowerCase() === ref.toLowerCase());
  if (named.length > 1) {
    throw new AmbiguousCheckpointError(ref, named.map((c) => c.id));
  }
  return named[0];
}

export class AmbiguousCheckpointError extends Error {
  constructor(
    readonly ref: string,
    readonly ids: string[],
  ) {
    super(`${ids.length} checkpoints are named "${ref}": name one by its id (${ids.join(", ")})`);
  }
}

/** The checkpoints whose parent is `id` (null: the roots), oldest first. */
export function childrenOf(tree: CheckpointTree, id: string | null): Checkpoint[] {
  return tree.checkpoints.filter((c) => c.parentId === id).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

/** `id` and every checkpoint below it, children before their parents (the order to remove a subtree in). */
export function subtreeLeavesFirst(tree: CheckpointTree, id: string): Checkpoint[] {
  const out: Checkpoint[] = [];
  const visit = (c: Checkpoint) => {
    for (const k of childrenOf(tree, c.id)) visit(k);
    out.push(c);
  };
  const root = tree.checkpoints.find((c) => c.id === id);
  if (root) visit(root);
  return out;
}

/** The checkpoints from the root down to `id` (the path of the current branch when id is Now's parent). */
export function ancestry(tree: CheckpointTree, id: string | null): Checkpoint[] {
  const out: Checkpoint[] = [];
  const seen = new Set<string>();
  for (let cur = id; cur !== null; ) {
    if (seen.has(cur)) break;
    seen.add(cur);
    const c = tree.checkpoints.find((x) => x.id === cur);
    if (!c) break;
    out.unshift(c);
    cur = c.parentId;
  }
  return out;
}

/**
 * Checks the tree's own consistency: ids unique, parents exist, no cycles, each image owned by
 * one node. Returns the problems (empty when sound); a damaged tree is reported, never repaired.
 */
export function treeProblems(tree: CheckpointTree): string[] {
  const problems: string[] = [];
  const ids = new Set<string>();
  for (const c of tree.checkpoints) {
    if (ids.has(c.id)) problems.push(`checkpoint id ${c.id} appears twice`);
    ids.add(c.id);
  }
  for (const c of tree.checkpoints) if (c.parentId !== null && !ids.has(c.parentId)) problems.push(`checkpoint "${c.name}" names a parent ${c.parentId} that does not exist`);
  if (tree.now.parentId !== null && !ids.has(tree.now.parentId)) problems.push(`Now names a parent ${tree.now.parentId} that does not exist`);
  for (const c of tree.checkpoints) if (ancestry(tree, c.id).length === 0 || ancestry(tree, c.id)[0]!.parentId !== null) problems.push(`checkpoint "${c.name}" is in a cycle`);
  const owner = new Map<string, string>();
  const claim = (path: string, who: string) => {
    const prev = owner.get(path);
    if (prev) problems.push(`image ${path} belongs to both ${prev} and ${who}`);
    owner.set(path, who);
  };
  for (const c of tree.checkpoints) for (const d of c.disks) claim(d.path, `checkpoint "${c.name}"`);
  for (const d of tree.now.disks) claim(d.path, "Now");
  return problems;
}

/** Every image a VM's checkpoints keep (none when it has no tree; a damaged tree gives none). */
export async function checkpointImages(home: VmHome): Promise<string[]> {
  try {
    const tree = CheckpointTree.parse(JSON.parse(await readFile(home.checkpointTree, "utf8")));
    return [...new Set(tree.checkpoints.flatMap((c) => c.disks.map((d) => d.path)))];
  } catch {
    return [];
  }
}
