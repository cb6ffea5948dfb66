import { createHash, randomBytes, randomUUID } from "node:crypto";
import { link, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { z } from "zod";
import { backingOf, commitInto, createOverlay, rebaseCopying, repoint, virtualSize } from "../checkpoints/images.js";
import { orderedSteps, planRemoval, type MergePlan, type MergeStep } from "../checkpoints/merge.js";
import {
  AmbiguousCheckpointError,
  Checkpoint as CheckpointSchema,
  CheckpointTree,
  EMPTY_TREE,
  TreeDisk,
  ancestry,
  childrenOf,
  findCheckpoint,
  serializeTree,
  subtreeLeavesFirst,
  treeProblems,
  type Checkpoint,
  type TakenType,
} from "../checkpoints/tree.js";
import { QEMU_IDS } from "../engine/qemu/layout.js";
import type { BlockNodeInfo, QemuMonitor } from "../engine/qemu/monitor.js";
import type { VmHome } from "../home/vm-home.js";
import type { ProgressCallback } from "../images/tools.js";
import { RuleError, checkNewCheckpoint, parseConfig, parseSlotRef, serializeConfig, slotRef, type ConfigStore, type VmConfig } from "../model/index.js";
import type { Supervisor } from "../supervisor/supervisor.js";
import { writeFileAtomic } from "../util/atomic.js";
import { VmhostError, notFound } from "../util/errors.js";
import { pathExists } from "../util/fs.js";
import type { VmChanges } from "./changes.js";
import type { IntegrationManager } from "./integration.js";
import { readPending } from "./nvram.js";
import type { VmManager } from "./vms.js";

/** One checkpoint as `checkpoint list` shows it (Get-VMSnapshot). */
export interface CheckpointView {
  id: string;
  name: string;
  parentId: string | null;
  /** Depth in the tree (0: a root). */
  depth: number;
  createdAt: string;
  type: TakenType;
  hasMemory: boolean;
  /** The VM's running state ("Now") descends from this checkpoint (Hyper-V's "You are here"). */
  isCurrent: boolean;
  children: string[];
  disks: string[];
}

export interface CheckpointList {
  vm: string;
  checkpointType: VmConfig["checkpointType"];
  /** The checkpoint Now hangs below (null: none). */
  current: string | null;
  checkpoints: CheckpointView[];
  /** A removal interrupted by a restart and being finished. */
  removing?: string;
}

export interface CheckpointResult {
  vm: string;
  checkpoint: CheckpointView;
  messages: string[];
  /** How long the guest was paused for it (ms), when it was running, and where that time went. */
  pausedMs?: number;
  pause?: Record<string, number>;
}

const RemovalRecord = z.object({ checkpointId: z.string(), name: z.string(), steps: z.array(z.unknown()), tree: CheckpointTree }).strict();

/** A stable job id per image, so a restarted service finds a block job it started. */
function jobId(kind: string, path: string): string {
  return `vmhost-${kind}-${createHash("sha256").update(path).digest("hex").slice(0, 12)}`;
}

function slotKey(slot: string): string {
  return slot.toLowerCase().replace(/[^a-z0-9]+/g, "");
}

/**
 * Checkpoints as Hyper-V has them (Checkpoint-VM, Get-VMSnapshot, Restore-VMSnapshot,
 * Remove-VMSnapshot, Rename-VMSnapshot), on external qcow2 snapshots and an NVRAM copy per
 * checkpoint (the tree's model: src/checkpoints/tree.ts; merging: merge.ts).
 *
 * - Standard: the guest is paused, every disk switches to a new overlay in one QMP transaction,
 *   the NVRAM is copied, the memory and device state streamed to the checkpoint, and the guest
 *   runs on. Applying it resumes the guest exactly where it was.
 * - Production: the guest's file systems are frozen through the agent (VSS), the disks and NVRAM
 *   taken the same way with the guest paused for milliseconds, no memory; applying it boots cold.
 *   When the agent does not answer it falls back to Standard (and says so); ProductionOnly refuses.
 *
 * Every step is one change transaction; a live switch is prepared first, so a service killed
 * after QEMU took the new overlays rolls the change forward (the guest's writes are never thrown
 * away); a removal writes its plan first and is finished by a restarted service.
 */
export class CheckpointManager {
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly changes: VmChanges;
  private readonly vms: VmManager;
  private readonly integration: IntegrationManager;

  constructor(deps: { store: ConfigStore; supervisor: Supervisor; changes: VmChanges; vms: VmManager; integration: IntegrationManager }) {
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.changes = deps.changes;
    this.vms = deps.vms;
    this.integration = deps.integration;
  }

  // ---- reading --------------------------------------------------------------------

  /** The VM's tree (empty when it has none); a damaged or inconsistent file is an error naming it. */
  async readTree(home: VmHome): Promise<CheckpointTree> {
    let text: string;
    try {
      text = await readFile(home.checkpointTree, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return structuredClone(EMPTY_TREE);
      throw new VmhostError("damaged", `${home.checkpointTree} cannot be read: ${(err as Error).message}`, 500);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new VmhostError("damaged", `${home.checkpointTree} is damaged: ${(err as Error).message}; it was left as it is`, 500);
    }
    const r = CheckpointTree.safeParse(raw);
    if (!r.success) throw new VmhostError("damaged", `${home.checkpointTree} is damaged: ${r.error.issues[0]?.path.join(".")}: ${r.error.issues[0]?.message}`, 500);
    const problems = treeProblems(r.data);
    if (problems.length) throw new VmhostError("damaged", `${home.checkpointTree} is inconsistent: ${problems.join("; ")}; it was left as it is`, 500);
    return r.data;
  }

  private view(tree: CheckpointTree, c: Checkpoint): CheckpointView {
    const current = new Set(ancestry(tree, tree.now.parentId).map((x) => x.id));
    return {
      id: c.id,
      name: c.name,
      parentId: c.parentId,
      depth: ancestry(tree, c.id).length - 1,
      createdAt: c.createdAt,
      type: c.type,
      hasMemory: c.hasMemory,
      isCurrent: tree.now.parentId === c.id || current.has(c.id),
      children: childrenOf(tree, c.id).map((k) => k.id),
      disks: c.disks.map((d) => d.slot),
    };
  }

  private find(tree: CheckpointTree, ref: string, vmName: string): Checkpoint {
    let c: Checkpoint | undefined;
    try {
      c = findCheckpoint(tree, ref);
    } catch (err) {
      if (err instanceof AmbiguousCheckpointError) throw new VmhostError("ambiguous", err.message, 409);
      throw err;
    }
    if (!c) throw notFound(`checkpoint "${ref}" of VM "${vmName}"`);
    return c;
  }

  /** Get-VMSnapshot: the tree in depth-first order (parents before children, oldest first). */
  async list(ref: string): Promise<CheckpointList> {
    const vm = await this.store.resolve(ref);
    const home = this.store.home(vm.id);
    const tree = await this.readTree(home);
    const out: CheckpointView[] = [];
    const visit = (parent: string | null) => {
      for (const c of childrenOf(tree, parent)) {
        out.push(this.view(tree, c));
        visit(c.id);
      }
    };
    visit(null);
    const removing = await readFile(home.checkpointRemoval, "utf8").then((t) => (JSON.parse(t) as { name?: string }).name, () => undefined);
    return { vm: vm.name, checkpointType: vm.checkpointType, current: tree.now.parentId, checkpoints: out, ...(removing ? { removing } : {}) };
  }

  // ---- Checkpoint-VM ----------------------------------------------------------------

  async create(ref: string, opts: { name?: string } = {}): Promise<CheckpointResult> {
    const vm = await this.store.resolve(ref);
    return this.supervisor.withLock(vm.id, () => this.createLocked(vm.id, opts));
  }

  private async createLocked(id: string, opts: { name?: string }): Promise<CheckpointResult> {
    const home = this.store.home(id);
    await this.changes.recover(home);
    await this.finishRemoval(home);
    let taken: Checkpoint | undefined;
    let newTree: CheckpointTree | undefined;
    let pausedMs: number | undefined;
    let phases: Record<string, number> | undefined;
    const { vm, messages } = await this.changes.changeLocked(id, async (ctx) => {
      const vm = ctx.vm;
      const before = ctx.before!;
      const tree = await this.readTree(home);
      checkNewCheckpoint(vm, tree.checkpoints.length);
      if (!["Off", "Saved", "Running", "Paused"].includes(ctx.state)) {
        throw new VmhostError("invalid-state", `VM "${vm.name}" is ${ctx.state}: a checkpoint needs it Running, Paused, Saved or Off`, 409);
      }
      if (opts.name !== undefined && (opts.name.trim() === "" || [...opts.name].length > 100)) throw new VmhostError("bad-request", "a checkpoint name has 1-100 characters");
      // What kind, by the VM's checkpoint type (Set-VM -CheckpointType) and what the guest allows.
      let type: TakenType = vm.checkpointType === "Standard" ? "Standard" : "Production";
      let frozen = false;
      if (ctx.running && type === "Production") {
        let why: string | undefined;
        if (ctx.state === "Paused") why = "the VM is paused, so its guest agent cannot freeze the file systems";
        else {
          try {
            await this.integration.freeze(vm.id, 60_000);
            frozen = true;
          } catch (err) {
            why = (err as Error).message;
          }
        }
        if (!frozen) {
          if (vm.checkpointType === "ProductionOnly") {
            throw new RuleError("production-checkpoint-failed", `a production checkpoint of VM "${vm.name}" is not possible (${why}), and its checkpoint type is ProductionOnly; nothing was changed`);
          }
          type = "Standard";
          ctx.messages.push(`a Production checkpoint was not possible (${why}); a Standard checkpoint was taken instead`);
        } else ctx.messages.push("the guest's file systems were frozen through its agent (VSS) for the checkpoint");
      }
      if (ctx.state === "Saved") type = "Standard";
      try {
        const cpId = randomUUID();
        const cpDir = home.checkpointDir(cpId);
        await ctx.txn.created(cpDir);
        await mkdir(cpDir, { recursive: true, mode: 0o700 });
        await mkdir(home.checkpointDisksDir, { recursive: true, mode: 0o700 });
        const now = new Date();
        const cp: Checkpoint = {
          id: cpId,
          name: opts.name ?? `${vm.name} - (${now.toISOString().slice(0, 10)} - ${now.toISOString().slice(11, 19)})`,
          parentId: tree.now.parentId,
          createdAt: now.toISOString(),
          type,
          hasMemory: false,
          disks: [],
          hasNvram: vm.generation === 2,
        };
        const nowDisks: TreeDisk[] = [];
        const switches: { slot: string; overlay: string }[] = [];
        for (const d of vm.hardDisks) {
          const slot = slotRef(d);
          const known = tree.now.disks.find((x) => x.slot === slot && x.path === d.path);
          // A disk the tree does not know yet (the VM's own): its backing file as its header names it.
          cp.disks.push({ slot, path: d.path, format: d.format, backing: known ? known.backing : await backingOf(d.path, d.format) });
          const overlay = join(home.checkpointDisksDir, `${slotKey(slot)}-${randomBytes(4).toString("hex")}.qcow2`);
          await ctx.txn.created(overlay);
          await createOverlay(overlay, { path: d.path, format: d.format }, ctx.running ? await virtualSize(d.path, d.format) : undefined);
          nowDisks.push({ slot, path: overlay, format: "qcow2", backing: { path: d.path, format: d.format } });
          switches.push({ slot, overlay });
          d.path = overlay;
          d.format = "qcow2";
        }
        // The configuration as it was (it names the images the checkpoint keeps).
        await ctx.txn.write(join(cpDir, "vm.json"), serializeConfig(before));
        const tree2: CheckpointTree = { ...tree, checkpoints: [...tree.checkpoints, cp], now: { parentId: cpId, disks: nowDisks } };
        const stageTree = () => ctx.txn.write(home.checkpointTree, serializeTree(tree2));
        const copyNvram = async () => {
          if (vm.generation !== 2) return;
          await ctx.txn.write(join(cpDir, "nvram.fd"), await readFile(home.nvram));
          const pending = await readPending(home);
          if (pending.length) await ctx.txn.write(join(cpDir, "firmware-pending.json"), JSON.stringify({ ops: pending }, null, 2) + "\n");
        };
        await stageTree();
        if (!ctx.running) {
          await copyNvram();
          if (ctx.state === "Saved") {
            // The saved state belongs to these disks as they are now: it is the checkpoint's memory.
            await link(home.savedState, await ctx.txn.stagePath(join(cpDir, "memory.bin")));
            cp.hasMemory = true;
            await stageTree();
          }
        } else {
          const memory = type === "Standard" ? await ctx.txn.stagePath(join(cpDir, "memory.bin")) : undefined;
          // Every file the pause writes is listed in the journal before it (so the pause writes no
          // journal), and what is staged is durable (fsyncs cost the guest nothing here): from now
          // on a kill rolls the change forward once QEMU uses the overlays, back otherwise.
          if (vm.generation === 2) {
            await ctx.txn.stagePath(join(cpDir, "nvram.fd"));
            if ((await readPending(home)).length) await ctx.txn.stagePath(join(cpDir, "firmware-pending.json"));
          }
          await ctx.txn.prepare();
          const blocks = await this.supervisor.monitorOf(vm)!.queryBlock();
          const r = await this.supervisor.withGuestPaused(
            vm,
            async (mon) => {
              // Only what must be taken with the guest stopped: the NVRAM copy and the switch.
              await copyNvram();
              await this.switchToOverlays(mon, switches, blocks);
              // QEMU writes the new overlays now: this change can only be finished, never undone.
              ctx.pointOfNoReturn();
            },
            memory,
          );
          pausedMs = r.pausedMs;
          phases = r.phases;
          if (memory && !r.stateError) {
            cp.hasMemory = true;
            await stageTree();
          } else if (r.stateError) {
            if (memory) await ctx.txn.unstage(join(cpDir, "memory.bin"));
            ctx.messages.push(`the memory state could not be written (${r.stateError.message}); the checkpoint keeps the disks and NVRAM only`);
          }
        }
        taken = cp;
        newTree = tree2;
        ctx.event("checkpoint-created", `${type} checkpoint "${cp.name}" taken${cp.hasMemory ? " with memory" : ""}${pausedMs !== undefined ? ` (guest paused ${pausedMs.toFixed(0)} ms)` : ""}`, {
          checkpoint: cpId,
          type,
          hasMemory: cp.hasMemory,
          ...(pausedMs !== undefined ? { pausedMs } : {}),
          ...(phases ? { pause: phases } : {}),
        });
      } finally {
        if (frozen) await this.integration.thaw(vm.id).catch(() => undefined);
      }
    });
    return { vm: vm.name, checkpoint: this.view(newTree!, taken!), messages, ...(pausedMs !== undefined ? { pausedMs } : {}), ...(phases ? { pause: phases } : {}) };
  }

  /** The running QEMU writes to the new overlays from now on: all disks in one QMP transaction. */
  private async switchToOverlays(mon: QemuMonitor, switches: { slot: string; overlay: string }[], known?: Awaited<ReturnType<QemuMonitor["queryBlock"]>>): Promise<void> {
    if (switches.length === 0) return;
    const blocks = known ?? (await mon.queryBlock());
    const added: string[] = [];
    try {
      const actions = [];
      for (const s of switches) {
        const root = rootNodeOf(blocks, s.slot);
        if (!root) throw new VmhostError("checkpoint-failed", `QEMU has no drive at ${s.slot}`, 500);
        const node = `ov-${randomBytes(5).toString("hex")}`;
        await mon.blockdevAdd({ driver: "qcow2", "node-name": node, file: { driver: "file", filename: s.overlay }, backing: null });
        added.push(node);
        actions.push({ type: "blockdev-snapshot" as const, data: { node: root, overlay: node } });
      }
      await mon.transaction(actions);
    } catch (err) {
      for (const n of added) await mon.blockdevDel(n).catch(() => undefined);
      throw err;
    }
  }

  // ---- Restore-VMSnapshot -----------------------------------------------------------------------

  /**
   * Applies checkpoint `cpRef`: the VM is turned off first (unless off), its configuration,
   * disks (new overlays on the checkpoint's images), NVRAM and, for a checkpoint with memory,
   * its machine state come back in one transaction; a VM that was running runs again (restored
   * where it was, or booted cold). With `checkpointCurrent` the current state is kept as a
   * checkpoint first. The overlays of the discarded state are deleted.
   */
  async apply(ref: string, cpRef: string, opts: { checkpointCurrent?: boolean } = {}): Promise<CheckpointResult> {
    const vm0 = await this.store.resolve(ref);
    return this.supervisor.withLock(vm0.id, async () => {
      const home = this.store.home(vm0.id);
      await this.changes.recover(home);
      await this.finishRemoval(home);
      const messages: string[] = [];
      let tree = await this.readTree(home);
      const cp = this.find(tree, cpRef, vm0.name);
      if (opts.checkpointCurrent) {
        const r = await this.createLocked(vm0.id, { name: `${vm0.name} - before applying "${cp.name}"` });
        messages.push(`the current state was kept as checkpoint "${r.checkpoint.name}"`, ...r.messages);
        tree = await this.readTree(home);
      }
      const vm = await this.store.get(vm0.id);
      const wasRunning = this.supervisor.isRunning(vm.id);
      if (wasRunning) {
        await this.supervisor.turnOff(vm);
        messages.push(`VM "${vm.name}" was turned off to apply the checkpoint`);
      }
      const cpDir = home.checkpointDir(cp.id);
      const cpConfig = parseConfig(join(cpDir, "vm.json"), await readFile(join(cpDir, "vm.json"), "utf8"));
      const referenced = new Set(tree.checkpoints.flatMap((c) => c.disks.map((d) => d.path)));
      const { messages: changeMessages } = await this.changes.changeLocked(vm.id, async (ctx) => {
        const cfg = structuredClone(cpConfig);
        cfg.name = ctx.vm.name;
        cfg.checkpointType = ctx.vm.checkpointType;
        const nowDisks: TreeDisk[] = [];
        await mkdir(home.checkpointDisksDir, { recursive: true, mode: 0o700 });
        for (const d of cp.disks) {
          const overlay = join(home.checkpointDisksDir, `${slotKey(d.slot)}-${randomBytes(4).toString("hex")}.qcow2`);
          await ctx.txn.created(overlay);
          await createOverlay(overlay, { path: d.path, format: d.format });
          nowDisks.push({ slot: d.slot, path: overlay, format: "qcow2", backing: { path: d.path, format: d.format } });
          const disk = cfg.hardDisks.find((x) => slotRef(x) === d.slot);
          if (disk) {
            disk.path = overlay;
            disk.format = "qcow2";
          }
        }
        ctx.replaceConfig(cfg);
        // The state being left: its overlays (vmhost's, read by no checkpoint) go.
        for (const d of tree.now.disks) if (this.owned(home, d.path) && !referenced.has(d.path)) await ctx.txn.remove(d.path);
        if (cp.hasNvram) {
          ctx.nvramReplacement = await readFile(join(cpDir, "nvram.fd"));
          const pendingText = await readFile(join(cpDir, "firmware-pending.json"), "utf8").catch(() => undefined);
          ctx.pendingReplacement = pendingText ? (JSON.parse(pendingText) as { ops: never[] }).ops : [];
        }
        await ctx.txn.remove(home.savedState);
        if (cp.hasMemory) {
          // The checkpoint's memory becomes the VM's saved state: the next start restores it.
          await link(join(cpDir, "memory.bin"), await ctx.txn.stagePath(home.savedState));
          ctx.restoresState = true;
        }
        await ctx.txn.write(home.checkpointTree, serializeTree({ ...tree, now: { parentId: cp.id, disks: nowDisks } }));
        ctx.event("checkpoint-applied", `checkpoint "${cp.name}" applied (${cp.type}${cp.hasMemory ? ", with memory" : ", cold"})`, { checkpoint: cp.id });
      });
      messages.push(...changeMessages);
      if (wasRunning) {
        const state = await this.vms.startLocked(await this.store.get(vm.id));
        messages.push(cp.hasMemory ? `the guest runs on from the checkpoint's memory (${state})` : `the guest was started cold (${state})`);
      } else if (cp.hasMemory) messages.push(`VM "${vm.name}" is Saved: start it to resume the checkpoint's guest where it was`);
      tree = await this.readTree(home);
      return { vm: vm.name, checkpoint: this.view(tree, tree.checkpoints.find((c) => c.id === cp.id)!), messages };
    });
  }

  // ---- Rename-VMSnapshot ------------------------------------------------------------------------

  async rename(ref: string, cpRef: string, name: string): Promise<CheckpointResult> {
    if (name.trim() === "" || [...name].length > 100) throw new VmhostError("bad-request", "a checkpoint name has 1-100 characters");
    let view: CheckpointView | undefined;
    const { vm, messages } = await this.changes.change(ref, async (ctx) => {
      const tree = await this.readTree(ctx.home);
      const cp = this.find(tree, cpRef, ctx.vm.name);
      const old = cp.name;
      cp.name = name;
      await ctx.txn.write(ctx.home.checkpointTree, serializeTree(tree));
      ctx.event("checkpoint-renamed", `checkpoint "${old}" renamed to "${name}"`, { checkpoint: cp.id });
      view = this.view(tree, cp);
    });
    return { vm: vm.name, checkpoint: view!, messages };
  }

  // ---- Remove-VMSnapshot ------------------------------------------------------------------------

  /**
   * Removes checkpoint `cpRef` (with `subtree`, its descendants too, leaves first), merging its
   * disks into what reads them so no data is lost; works while the VM runs (QMP block jobs).
   */
  async remove(ref: string, cpRef: string, opts: { subtree?: boolean } = {}, onProgress?: (fraction: number, what: string) => void): Promise<{ vm: string; removed: string[]; messages: string[] }> {
    const vm0 = await this.store.resolve(ref);
    return this.supervisor.withLock(vm0.id, async () => {
      const home = this.store.home(vm0.id);
      await this.changes.recover(home);
      await this.finishRemoval(home);
      const tree = await this.readTree(home);
      const cp = this.find(tree, cpRef, vm0.name);
      const victims = opts.subtree ? subtreeLeavesFirst(tree, cp.id) : [cp];
      const messages: string[] = [];
      for (const [i, v] of victims.entries()) {
        const current = await this.readTree(home);
        const plan = planRemoval(current, v.id, (p) => this.owned(home, p));
        await writeFileAtomic(home.checkpointRemoval, JSON.stringify({ checkpointId: v.id, name: v.name, steps: plan.steps, tree: plan.tree }) + "\n", 0o600);
        await this.runRemoval(home, vm0.id, plan, onProgress ? (f, w) => onProgress((i + f) / victims.length, w) : undefined);
        messages.push(`checkpoint "${v.name}" removed${plan.steps.some((s) => s.kind !== "delete") ? " (merged into what followed it)" : ""}`);
      }
      return { vm: vm0.name, removed: victims.map((v) => v.name), messages };
    });
  }

  /**
   * vmhost made this image for this VM (a checkpoint overlay, or a disk `new`/`disk add --new`
   * made: `<disks>/<vm id>-...`) and may delete it once nothing reads it; a user's own disk is
   * never deleted.
   */
  private owned(home: VmHome, path: string): boolean {
    return path.startsWith(home.checkpointDisksDir + "/") || (dirname(path) === dirname(home.checkpointDisksDir) && basename(path).startsWith(`${home.id}-`));
  }

  /** Finishes a removal a killed service left (its plan is on disk); each step is idempotent. */
  async finishRemoval(home: VmHome): Promise<void> {
    let text: string;
    try {
      text = await readFile(home.checkpointRemoval, "utf8");
    } catch {
      return;
    }
    const rec = RemovalRecord.parse(JSON.parse(text));
    const cp = CheckpointSchema.safeParse((await this.readTree(home)).checkpoints.find((c) => c.id === rec.checkpointId));
    if (!cp.success) {
      // The bookkeeping was committed: only the cleanup was left.
      await rm(home.checkpointRemoval, { force: true });
      return;
    }
    const plan: MergePlan = { checkpoint: cp.data, steps: rec.steps as MergeStep[], tree: rec.tree };
    await this.runRemoval(home, home.id, plan);
    const vm = await this.store.get(home.id).catch(() => undefined);
    if (vm) await this.supervisor.event(vm, "checkpoint-removal-finished", `the removal of checkpoint "${rec.name}", interrupted by a restart, was finished`);
  }

  private async runRemoval(home: VmHome, vmId: string, plan: MergePlan, onProgress?: (fraction: number, what: string) => void): Promise<void> {
    const work = orderedSteps(plan).filter((s) => s.kind !== "delete");
    for (const [i, step] of work.entries()) {
      const progress: ProgressCallback | undefined = onProgress ? (f) => onProgress((i + f) / Math.max(1, work.length), `${step.kind} ${step.slot}`) : undefined;
      if (step.kind === "commit") await this.commitStep(vmId, step, progress);
      else if (step.kind === "stream") await this.streamStep(vmId, step, progress);
    }
    // The bookkeeping, in one transaction: the tree, the VM's disks (Now may own other images now), the plan gone.
    await this.changes.changeLocked(vmId, async (ctx) => {
      for (const nd of plan.tree.now.disks) {
        const d = ctx.vm.hardDisks.find((x) => slotRef(x) === nd.slot);
        if (d) {
          d.path = nd.path;
          d.format = nd.format;
        }
      }
      await ctx.txn.write(home.checkpointTree, serializeTree(plan.tree));
      await ctx.txn.remove(home.checkpointRemoval);
      ctx.event("checkpoint-removed", `checkpoint "${plan.checkpoint.name}" removed`, { checkpoint: plan.checkpoint.id });
    });
    // Cleanup: nothing reads these any more.
    for (const s of plan.steps) if (s.kind === "delete") await rm(s.path, { force: true });
    await rm(home.checkpointDir(plan.checkpoint.id), { recursive: true, force: true });
    onProgress?.(1, "done");
  }

  /** The child image is committed into the removed checkpoint's image, which takes its place. */
  private async commitStep(vmId: string, step: Extract<MergeStep, { kind: "commit" }>, onProgress?: ProgressCallback): Promise<void> {
    const mon = this.supervisor.monitorOf({ id: vmId });
    let liveFiles = new Set<string>();
    if (mon) {
      const nodes = await mon.queryNamedBlockNodes();
      liveFiles = new Set(nodes.map((n) => n.file));
      const top = formatNode(nodes, step.top.path);
      const id = jobId("commit", step.top.path);
      const running = (await mon.queryJobs()).find((j) => j.id === id);
      if (top || running) {
        if (!running) {
          const base = formatNode(nodes, step.base.path);
          if (!top || !base) throw new VmhostError("checkpoint-failed", `QEMU's block graph does not hold ${step.base.path}`, 500);
          const root = rootNodeOf(await mon.queryBlock(), step.slot);
          if (!root) throw new VmhostError("checkpoint-failed", `QEMU has no drive at ${step.slot}`, 500);
          await mon.blockCommit(id, root, top["node-name"], base["node-name"]);
        }
        await runJob(mon, id, onProgress);
        // A node made by blockdev-add stays in the graph after the job drops it from the chain,
        // holding its backing file as a parent (then that is no root for the next job): delete it.
        if (top) await mon.blockdevDel(top["node-name"]).catch(() => undefined);
      } else await commitInto(step.top.path, step.base, onProgress);
    } else await commitInto(step.top.path, step.base, onProgress);
    // Images that read the child's image read the base now (same content); QEMU re-points the one in its chain itself.
    for (const r of step.repoint) if (!liveFiles.has(r.disk.path)) await repoint(r.disk.path, step.base);
  }

  /** The removed checkpoint's data is copied into the child's image, which then reads its backing file. */
  private async streamStep(vmId: string, step: Extract<MergeStep, { kind: "stream" }>, onProgress?: ProgressCallback): Promise<void> {
    const mon = this.supervisor.monitorOf({ id: vmId });
    if (mon) {
      const nodes = await mon.queryNamedBlockNodes();
      const image = formatNode(nodes, step.image.path);
      const id = jobId("stream", step.image.path);
      const running = (await mon.queryJobs()).find((j) => j.id === id);
      if (image || running) {
        if (!running) {
          const base = step.newBacking ? formatNode(nodes, step.newBacking.path) : undefined;
          if (step.newBacking && !base) throw new VmhostError("checkpoint-failed", `QEMU's block graph does not hold ${step.newBacking.path}`, 500);
          await mon.blockStream(id, image!["node-name"], base ? { baseNode: base["node-name"] } : {});
        }
        await runJob(mon, id, onProgress);
        const from = formatNode(await mon.queryNamedBlockNodes(), step.from.path);
        if (from) await mon.blockdevDel(from["node-name"]).catch(() => undefined);
        return;
      }
    }
    await rebaseCopying(step.image.path, step.newBacking, onProgress);
  }

  /**
   * At service start (after adoption and change recovery): interrupted removals are finished,
   * and checkpoint folders and images that nothing names any more (a kill after the bookkeeping,
   * before the cleanup) are deleted.
   */
  async recoverAll(): Promise<void> {
    for (const id of await this.store.ids()) {
      const home = this.store.home(id);
      try {
        await this.finishRemoval(home);
        const tree = await this.readTree(home);
        const vm = await this.store.get(id).catch(() => undefined);
        if (!vm) continue;
        const images = new Set([...tree.checkpoints.flatMap((c) => c.disks.map((d) => d.path)), ...tree.now.disks.map((d) => d.path), ...vm.hardDisks.map((d) => d.path)]);
        for (const f of await readdir(home.checkpointDisksDir).catch(() => [] as string[])) {
          const p = join(home.checkpointDisksDir, f);
          if (!images.has(p) && !f.startsWith(".")) await rm(p, { force: true });
        }
        const ids = new Set(tree.checkpoints.map((c) => c.id));
        for (const f of await readdir(home.checkpointsDir, { withFileTypes: true }).catch(() => [])) {
          if (f.isDirectory() && !ids.has(f.name)) await rm(join(home.checkpointsDir, f.name), { recursive: true, force: true });
        }
      } catch (err) {
        const vm = await this.store.get(id).catch(() => undefined);
        if (vm) await this.supervisor.event(vm, "checkpoint-recovery-failed", `checkpoints could not be recovered: ${(err as Error).message}`);
      }
    }
  }

  /** The checkpoint images a VM has (for remove --delete-disks). */
  async imagesOf(home: VmHome): Promise<string[]> {
    const tree = await this.readTree(home).catch(() => EMPTY_TREE);
    return [...new Set(tree.checkpoints.flatMap((c) => c.disks.map((d) => d.path)))];
  }
}

/** The format node (qcow2, raw, ...) that reads `path`; its protocol node (driver "file") names the same file. */
function formatNode(nodes: BlockNodeInfo[], path: string): BlockNodeInfo | undefined {
  return nodes.find((n) => n.file === path && n.drv !== "file");
}

/** The root (active) node of the drive at `slot` ("SCSI 0:0"), from query-block. */
function rootNodeOf(blocks: { qdev?: string; inserted?: { "node-name": string } }[], slot: string): string | undefined {
  const s = parseSlotRef(slot);
  if (!s) return undefined;
  const dev = QEMU_IDS.disk(s.controllerType, s.controllerNumber, s.controllerLocation);
  return blocks.find((b) => b.qdev === dev || b.qdev?.endsWith(`/${dev}`) || b.qdev?.includes(`/${dev}/`))?.inserted?.["node-name"];
}

/** Runs a QMP job to its end: completes it when ready (active commit), reports progress, dismisses it; its error is thrown. */
async function runJob(mon: QemuMonitor, id: string, onProgress?: ProgressCallback): Promise<void> {
  let completed = false;
  for (;;) {
    const job = (await mon.queryJobs()).find((j) => j.id === id);
    if (!job) return;
    if (job["total-progress"] > 0) onProgress?.(Math.min(1, job["current-progress"] / job["total-progress"]));
    if (job.status === "ready" && !completed) {
      completed = true;
      await mon.blockJobComplete(id);
    } else if (job.status === "concluded" || job.status === "null") {
      await mon.jobDismiss(id).catch(() => undefined);
      if (job.error) throw new VmhostError("checkpoint-merge-failed", `QEMU's ${job.type} job failed: ${job.error}`, 500);
      onProgress?.(1);
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
