import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm, unlink, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { z } from "zod";
import { syncDir, writeFileAtomic } from "../util/atomic.js";

/**
 * A change to several files that is whole or absent after a crash (a redo journal).
 *
 * Each new file is first written beside its target under a temporary name
 * (`.<name>.txn-<id>`), every path it will touch listed in `<txnDir>/plan.json` before it is
 * created. `commit()` fsyncs the staged files and then writes `<txnDir>/commit.json`
 * atomically: that rename is the commit point. Afterwards each staged file is renamed over its
 * target and each removed target deleted, then the journal folder goes.
 *
 * `recoverTransaction()` (run before a VM is used, e.g. at service start) rolls a committed
 * journal forward (the renames are idempotent: a staged file already renamed is simply gone)
 * and rolls an uncommitted one back (its staged files are deleted). Targets must be on the same
 * file system as their folder's staged file (a rename), which holds for everything under
 * `$VMHOST_HOME`.
 */
const Plan = z.object({
  id: z.string(),
  staged: z.array(z.object({ staged: z.string(), target: z.string() }).strict()),
  removed: z.array(z.string()),
  /** Files made at their final path before the commit (a disk a running QEMU opens at once): deleted on rollback. */
  created: z.array(z.string()).default([]),
});
type Plan = z.infer<typeof Plan>;

export class FileTransaction {
  private readonly plan: Plan;
  private finished = false;

  private constructor(readonly txnDir: string) {
    this.plan = { id: randomBytes(6).toString("hex"), staged: [], removed: [], created: [] };
  }

  /** Opens a journal in `txnDir` (which must not exist: recover first). */
  static async begin(txnDir: string): Promise<FileTransaction> {
    await mkdir(dirname(txnDir), { recursive: true, mode: 0o700 });
    await mkdir(txnDir, { mode: 0o700 });
    const t = new FileTransaction(txnDir);
    await t.savePlan();
    return t;
  }

  get isEmpty(): boolean {
    return this.plan.staged.length === 0 && this.plan.removed.length === 0;
  }

  private async savePlan(): Promise<void> {
    await writeFileAtomic(join(this.txnDir, "plan.json"), JSON.stringify(this.plan) + "\n", 0o600);
  }

  /**
   * A path beside `target` where the caller produces the new file (for example with qemu-img);
   * it replaces `target` at commit. Listed in the plan before it is returned.
   */
  async stagePath(target: string): Promise<string> {
    const existing = this.plan.staged.find((s) => s.target === target);
    if (existing) return existing.staged;
    const staged = join(dirname(target), `.${basename(target)}.txn-${this.plan.id}`);
    this.plan.staged.push({ staged, target });
    this.plan.removed = this.plan.removed.filter((r) => r !== target);
    await this.savePlan();
    return staged;
  }

  /**
   * Records that the caller is about to create `path` at its final place (it must not exist):
   * kept at commit, deleted on rollback, also after a kill. Listed before it is created.
   */
  async created(path: string): Promise<void> {
    if (!this.plan.created.includes(path)) this.plan.created.push(path);
    await this.savePlan();
  }

  /**
   * New content for `target`, replacing it at commit (mode 0600 unless given). Writing the same
   * target again replaces the staged content atomically (a staged file is whole or absent).
   */
  async write(target: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
    const staged = await this.stagePath(target);
    await mkdir(dirname(staged), { recursive: true, mode: 0o700 });
    const tmp = `${staged}.tmp`;
    await rm(tmp, { force: true });
    const fh = await open(tmp, "wx", mode);
    try {
      await fh.writeFile(data);
    } finally {
      await fh.close();
    }
    await rename(tmp, staged);
  }

  /**
   * Makes what is staged so far durable and records it (`prepared.json`): from here a recovery
   * may roll the change forward when the caller's condition holds (e.g. a running QEMU already
   * writes to the files this change created). Used right before an effect outside the files.
   */
  async prepare(): Promise<void> {
    for (const s of this.plan.staged) {
      const fh = await open(s.staged, "r+").catch(() => undefined);
      if (!fh) continue;
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    await writeFileAtomic(join(this.txnDir, "prepared.json"), JSON.stringify(this.plan) + "\n", 0o600);
  }

  /** The files this change created at their final places (for a recovery's roll-forward condition). */
  get createdFiles(): readonly string[] {
    return this.plan.created;
  }

  /** Takes `target` out of the change again (its producer failed): its staged file, if any, goes. */
  async unstage(target: string): Promise<void> {
    const i = this.plan.staged.findIndex((s) => s.target === target);
    if (i < 0) return;
    const staged = this.plan.staged[i]!.staged;
    this.plan.staged.splice(i, 1);
    await this.savePlan();
    for (const p of [staged, `${staged}.tmp`, `${staged}.partial`]) await rm(p, { force: true });
  }

  /** Deletes `target` at commit (a missing target is fine). */
  async remove(target: string): Promise<void> {
    const i = this.plan.staged.findIndex((s) => s.target === target);
    if (i >= 0) {
      await rm(this.plan.staged[i]!.staged, { force: true });
      this.plan.staged.splice(i, 1);
    }
    if (!this.plan.removed.includes(target)) this.plan.removed.push(target);
    await this.savePlan();
  }

  /** Makes every staged file durable, writes the commit record, then applies it. */
  async commit(): Promise<void> {
    if (this.finished) throw new Error("transaction already finished");
    const dirs = new Set<string>();
    for (const s of this.plan.staged) {
      const fh = await open(s.staged, "r+");
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      dirs.add(dirname(s.staged));
    }
    for (const d of dirs) await syncDir(d);
    await writeFileAtomic(join(this.txnDir, "commit.json"), JSON.stringify(this.plan) + "\n", 0o600);
    // Leftovers of restaging or of a stream into a staged file go before the renames.
    for (const s of this.plan.staged) for (const p of [`${s.staged}.tmp`, `${s.staged}.partial`]) await rm(p, { force: true });
    this.finished = true;
    await applyPlan(this.txnDir, this.plan);
  }

  /** Throws the change away: staged files are deleted, targets untouched. */
  async rollback(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await discard(this.plan);
    await rm(this.txnDir, { recursive: true, force: true });
  }
}

/** Deletes what an uncommitted plan made: staged files (and their leftovers) and created files or folders. */
async function discard(plan: Plan): Promise<void> {
  for (const s of plan.staged) {
    for (const p of [s.staged, `${s.staged}.tmp`, `${s.staged}.partial`]) await rm(p, { force: true });
  }
  for (const c of plan.created) await rm(c, { force: true, recursive: true });
}

async function applyPlan(txnDir: string, plan: Plan): Promise<void> {
  const dirs = new Set<string>();
  for (const s of plan.staged) {
    try {
      await rename(s.staged, s.target);
    } catch (err) {
      // Already renamed by an earlier (interrupted) roll-forward.
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    dirs.add(dirname(s.target));
  }
  for (const r of plan.removed) {
    await unlink(r).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "ENOENT") throw err;
    });
    dirs.add(dirname(r));
  }
  for (const d of dirs) await syncDir(d).catch(() => undefined);
  await rm(txnDir, { recursive: true, force: true });
}

/**
 * Finishes or undoes whatever journal `txnDir` holds after a crash: committed -> rolled
 * forward, else rolled back. Returns what happened ("none" when there was no journal).
 */
export async function recoverTransaction(
  txnDir: string,
  opts: { rollForwardPrepared?: (created: readonly string[]) => Promise<boolean> } = {},
): Promise<"none" | "rolled-forward" | "rolled-back"> {
  let commitText: string | undefined;
  try {
    commitText = await readFile(join(txnDir, "commit.json"), "utf8");
  } catch {
    commitText = undefined;
  }
  if (commitText !== undefined) {
    const parsed = Plan.safeParse(safeJson(commitText));
    if (parsed.success) {
      await applyPlan(txnDir, parsed.data);
      return "rolled-forward";
    }
    // A torn commit record cannot exist (it is written atomically): treat as uncommitted.
  }
  let planText: string | undefined;
  try {
    planText = await readFile(join(txnDir, "plan.json"), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      // No plan (killed while making the folder), or no journal at all.
      const existed = await rm(txnDir, { recursive: true }).then(
        () => true,
        () => false,
      );
      return existed ? "rolled-back" : "none";
    }
    throw err;
  }
  const plan = Plan.safeParse(safeJson(planText));
  const prepared = await readFile(join(txnDir, "prepared.json"), "utf8").then(
    () => true,
    () => false,
  );
  if (plan.success && prepared && opts.rollForwardPrepared && (await opts.rollForwardPrepared(plan.data.created))) {
    // The change took effect outside the files (a QEMU writes to what it created): finish it.
    // Each staged file is whole or absent (written beside, renamed), so what is there is applied.
    const present = [];
    for (const s of plan.data.staged) if (await readFile(s.staged).then(() => true, () => false)) present.push(s);
    for (const s of plan.data.staged) for (const p of [`${s.staged}.tmp`, `${s.staged}.partial`]) await rm(p, { force: true });
    await applyPlan(txnDir, { ...plan.data, staged: present });
    return "rolled-forward";
  }
  if (plan.success) await discard(plan.data);
  await rm(txnDir, { recursive: true, force: true });
  return "rolled-back";
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Writes `data` to `path` only if nothing is there (used for markers); true when written. */
export async function writeNew(path: string, data: string): Promise<boolean> {
  try {
    await writeFile(path, data, { flag: "wx", mode: 0o600 });
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
}
