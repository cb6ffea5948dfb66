import { childrenOf, type Checkpoint, type CheckpointTree, type TreeDisk } from "./tree.js";

/**
 * Removing a checkpoint (Remove-VMSnapshot) merges, never loses data, and never touches an image
 * another branch still reads. Per disk, with F the removed checkpoint's image and its children
 * the images whose backing file F is (a child checkpoint's, or Now's overlay):
 *
 * - no child: nothing reads F; it is deleted (if vmhost made it: a user's own disk is kept).
 * - one child I: F is read by I alone, so I is committed into F (`commit`: qemu-img commit, or
 *   QMP block-commit when I is in a running chain, with a pivot when I is the active image) and F
 *   takes I's place; images that read I are re-pointed at F (their content is the same).
 * - several children: F is shared, so it is not written; F's data is streamed into each child
 *   (`stream`: qemu-img rebase onto F's own backing file, or QMP block-stream when running), and
 *   F is deleted.
 *
 * Pure: plans the steps and the tree that results; merge-run.ts carries them out, each step
 * idempotent so a service killed half way runs the plan again from the start.
 */

/** A node of the tree by reference: a checkpoint id or Now. */
export type NodeRef = { kind: "now" } | { kind: "checkpoint"; id: string };

export type MergeStep =
  | {
      kind: "commit";
      slot: string;
      /** The child's image, committed into `base` and then deleted. */
      top: TreeDisk;
      /** The removed checkpoint's image, which takes the child's place. */
      base: TreeDisk;
      child: NodeRef;
      /** Images reading `top` that are re-pointed at `base` (same content: an unsafe rebase). */
      repoint: { node: NodeRef; disk: TreeDisk }[];
    }
  | {
      kind: "stream";
      slot: string;
      /** The child's image: the removed image's data is copied into it. */
      image: TreeDisk;
      /** The removed checkpoint's image. */
      from: TreeDisk;
      /** What `image` reads afterwards: `from`'s own backing file (null: none, a full copy). */
      newBacking: TreeDisk["backing"];
      child: NodeRef;
    }
  | { kind: "delete"; slot: string; path: string };

export interface MergePlan {
  checkpoint: Checkpoint;
  steps: MergeStep[];
  /** The tree once the steps are done. */
  tree: CheckpointTree;
}

function nodeDisks(tree: CheckpointTree, node: NodeRef): TreeDisk[] {
  return node.kind === "now" ? tree.now.disks : tree.checkpoints.find((c) => c.id === node.id)?.disks ?? [];
}

/**
 * The plan to remove checkpoint `id`. `owned(path)` says whether vmhost made an image (and may
 * delete it); a user's own disk is never deleted.
 */
export function planRemoval(tree: CheckpointTree, id: string, owned: (path: string) => boolean): MergePlan {
  const cp = tree.checkpoints.find((c) => c.id === id);
  if (!cp) throw new Error(`no checkpoint ${id}`);
  const next: CheckpointTree = structuredClone(tree);
  const steps: MergeStep[] = [];
  const nodes: NodeRef[] = [{ kind: "now" }, ...tree.checkpoints.filter((c) => c.id !== id).map((c): NodeRef => ({ kind: "checkpoint", id: c.id }))];
  const mutableDisks = (node: NodeRef): TreeDisk[] =>
    node.kind === "now" ? next.now.disks : next.checkpoints.find((c) => c.id === node.id)!.disks;

  for (const f of cp.disks) {
    const readers = nodes.flatMap((n) => nodeDisks(tree, n).filter((d) => d.slot === f.slot && d.backing?.path === f.path).map((d) => ({ node: n, disk: d })));
    if (readers.length === 0) {
      if (owned(f.path)) steps.push({ kind: "delete", slot: f.slot, path: f.path });
      continue;
    }
    if (readers.length === 1) {
      const { node, disk: top } = readers[0]!;
      const repoint = nodes.flatMap((n) => nodeDisks(tree, n).filter((d) => d.backing?.path === top.path).map((d) => ({ node: n, disk: d })));
      steps.push({ kind: "commit", slot: f.slot, top, base: f, child: node, repoint });
      // The child now owns F (with F's own backing); whatever read the child's image reads F.
      const cd = mutableDisks(node).find((d) => d.path === top.path)!;
      cd.path = f.path;
      cd.format = f.format;
      cd.backing = f.backing;
      for (const r of repoint) {
        const rd = mutableDisks(r.node).find((d) => d.path === r.disk.path)!;
        rd.backing = { path: f.path, format: f.format };
      }
      if (owned(top.path)) steps.push({ kind: "delete", slot: f.slot, path: top.path });
      continue;
    }
    for (const { node, disk } of readers) {
      steps.push({ kind: "stream", slot: f.slot, image: disk, from: f, newBacking: f.backing, child: node });
      mutableDisks(node).find((d) => d.path === disk.path)!.backing = f.backing;
    }
    if (owned(f.path)) steps.push({ kind: "delete", slot: f.slot, path: f.path });
  }

  for (const c of next.checkpoints) if (c.parentId === id) c.parentId = cp.parentId;
  if (next.now.parentId === id) next.now.parentId = cp.parentId;
  next.checkpoints = next.checkpoints.filter((c) => c.id !== id);
  return { checkpoint: cp, steps, tree: next };
}

/** Deletes come last: every commit and stream must be done before any image goes. */
export function orderedSteps(plan: MergePlan): MergeStep[] {
  return [...plan.steps.filter((s) => s.kind !== "delete"), ...plan.steps.filter((s) => s.kind === "delete")];
}

/** How many children a checkpoint has (other checkpoints, and Now when it hangs below it). */
export function childCount(tree: CheckpointTree, id: string): number {
  return childrenOf(tree, id).length + (tree.now.parentId === id ? 1 : 0);
}
