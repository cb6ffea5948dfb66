import { EventEmitter } from "node:events";
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { FileTransaction, recoverTransaction } from "../home/txn.js";
import type { VmHome } from "../home/vm-home.js";
import { ConfigStore, serializeConfig, validateVm, type HostCapacity, type VmConfig, type VmState } from "../model/index.js";
import type { Supervisor, VmRef } from "../supervisor/supervisor.js";
import { VmhostError } from "../util/errors.js";
import { pathExists } from "../util/fs.js";
import { overlayHasData } from "../checkpoints/images.js";

/**
 * The one change transaction every change of a VM goes through (configuration, firmware,
 * integration services, network, disks, checkpoints):
 *
 *   lock the VM -> copy its configuration -> apply the change to the copy -> validate every
 *   rule of model/ -> the after-change steps (the NVRAM's device entries, pending firmware
 *   operations, ...) stage their files -> one multi-file commit (home/txn.ts) -> events.
 *
 * Whatever a step stages (vm.json, nvram.fd, firmware-pending.json, a new disk) lands together
 * or not at all, also across a kill (the journal is rolled forward or back before the VM is
 * used again). A change that fails anywhere before the commit leaves every file as it was and
 * runs the undo actions of live effects (a hot-added disk is removed again).
 */
export interface ChangeContext {
  /** The stored configuration before the change; undefined while a VM is being created. */
  readonly before: Readonly<VmConfig> | undefined;
  /** The configuration being changed (a copy; stored at commit). */
  readonly vm: VmConfig;
  readonly home: VmHome;
  /** The VM's runtime state when the change began (under its lock). */
  readonly state: VmState;
  /** QEMU is running (Running, Paused, Starting, Saving, Stopping). */
  readonly running: boolean;
  /** The VM's multi-file journal: stage new files (disks) or removals here. */
  readonly txn: FileTransaction;
  /** Firmware operations this change asks for (applied to the NVRAM now, or kept pending). */
  readonly firmwareOps: FirmwareOp[];
  /** What was done, line by line, for the caller (CLI) to print. */
  readonly messages: string[];
  /** Undo a live effect (e.g. a hot-added disk) when the change fails after it. */
  onRollback(fn: () => Promise<void>): void;
  /** Journal an event once the change is committed. */
  event(type: string, message: string, data?: Record<string, unknown>): void;
  /** Whether the NVRAM is owned by QEMU now (running, or Saved: a restore writes the flash back); why, or null. */
  nvramBusy(): Promise<string | null>;
  /**
   * The NVRAM this change puts in place (a checkpoint's copy): the NVRAM step starts from these
   * bytes instead of the VM's file. `pendingReplacement` likewise for the pending operations.
   */
  nvramReplacement?: Uint8Array;
  pendingReplacement?: FirmwareOp[];
  /** This change leaves a machine state to restore (a checkpoint's memory): the NVRAM comes back with it. */
  restoresState?: boolean;
  /** Replaces the whole configuration being changed (applying a checkpoint); the id must stay. */
  replaceConfig(config: VmConfig): void;
  /**
   * The change has taken effect outside the files (a QEMU writes to what it created): a failure
   * from here on does not roll it back (that would delete what the guest writes to); the journal
   * is left for recovery, which finishes it.
   */
  pointOfNoReturn(): void;
}

/** A firmware operation on the NVRAM, as asked for (re-resolved against the store when applied). */
export type FirmwareOp =
  | { op: "first-boot-device"; target: string; at: string }
  | { op: "boot-order"; targets: string[]; prune: boolean; pruneFiles: boolean; at: string }
  | { op: "secure-boot"; enabled: boolean; template: "MicrosoftWindows" | "MicrosoftUEFICertificateAuthority" | "OpenSourceShieldedVM"; at: string }
  | { op: "devices"; reason: string; at: string };

/** A step run after the change is validated and before the commit (the NVRAM step is one). */
export interface AfterChangeStep {
  readonly name: string;
  run(ctx: ChangeContext): Promise<void>;
}

export interface ChangeOptions {
  /** Journal entry for the change (default: none beyond what the change itself journals). */
  event?: { type: string; message: string; data?: Record<string, unknown> };
}

export interface ChangeEvents {
  /** A change was committed: before (undefined for a new VM) and after. */
  committed: [before: VmConfig | undefined, after: VmConfig];
}

export class VmChanges extends EventEmitter<ChangeEvents> {
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly host: () => HostCapacity;
  private readonly steps: AfterChangeStep[];

  constructor(deps: { store: ConfigStore; supervisor: Supervisor; hostCapacity: () => HostCapacity; steps: AfterChangeStep[] }) {
    super();
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.host = deps.hostCapacity;
    this.steps = deps.steps;
  }

  /** Changes the VM named (or id'd) `ref` under its lock. Returns the committed configuration and fn's result. */
  async change<T>(ref: string, fn: (ctx: ChangeContext) => Promise<T> | T, opts: ChangeOptions = {}): Promise<{ vm: VmConfig; result: T; messages: string[] }> {
    const current = await this.store.resolve(ref);
    return this.supervisor.withLock(current.id, () => this.changeLocked(current.id, fn, opts));
  }

  /** `change` for a caller that holds the VM's lock already (lifecycle operations). */
  async changeLocked<T>(id: string, fn: (ctx: ChangeContext) => Promise<T> | T, opts: ChangeOptions = {}): Promise<{ vm: VmConfig; result: T; messages: string[] }> {
    const home = this.store.home(id);
    await this.recover(home);
    const before = await this.store.get(id);
    return this.run(home, before, structuredClone(before), fn, opts);
  }

  /**
   * Creates a VM: its folder, configuration and whatever the steps and `fn` stage (NVRAM, new
   * disks), in one commit. A refusal leaves nothing behind.
   */
  async create<T>(draft: VmConfig, fn: (ctx: ChangeContext) => Promise<T> | T, opts: ChangeOptions = {}): Promise<{ vm: VmConfig; result: T; messages: string[] }> {
    const home = this.store.home(draft.id);
    return this.supervisor.withLock(draft.id, async () => {
      if (await pathExists(home.dir)) throw new VmhostError("exists", `a VM with id ${draft.id} exists already`, 409);
      await mkdir(home.dir, { recursive: true, mode: 0o700 });
      try {
        return await this.run(home, undefined, draft, fn, opts);
      } catch (err) {
        if (!(await pathExists(home.config))) await rm(home.dir, { recursive: true, force: true });
        throw err;
      }
    });
  }

  private async run<T>(
    home: VmHome,
    before: VmConfig | undefined,
    vm: VmConfig,
    fn: (ctx: ChangeContext) => Promise<T> | T,
    opts: ChangeOptions,
  ): Promise<{ vm: VmConfig; result: T; messages: string[] }> {
    const state = before ? await this.supervisor.state(before) : "Off";
    const running = before ? this.supervisor.isRunning(before.id) : false;
    const undo: (() => Promise<void>)[] = [];
    let noReturn = false;
    const events: { type: string; message: string; data?: Record<string, unknown> }[] = [];
    const txn = await FileTransaction.begin(home.txnDir);
    const ctx: ChangeContext = {
      before,
      vm,
      home,
      state,
      running,
      txn,
      firmwareOps: [],
      messages: [],
      onRollback: (f) => void undo.push(f),
      event: (type, message, data) => void events.push({ type, message, ...(data ? { data } : {}) }),
      nvramBusy: async () => {
        if (this.supervisor.isRunning(vm.id)) return `VM "${vm.name}" is ${this.supervisor.stateOf(vm) ?? "running"} and QEMU has its NVRAM open`;
        if (ctx.restoresState) return `VM "${vm.name}" gets a machine state to restore, which writes the firmware's flash back`;
        if (await pathExists(home.savedState)) return `VM "${vm.name}" is Saved: restoring its state writes the firmware's flash back`;
        return null;
      },
      pointOfNoReturn: () => {
        noReturn = true;
      },
      replaceConfig: (config) => {
        if (config.id !== vm.id) throw new Error("replaceConfig: a change keeps the VM's id");
        for (const k of Object.keys(vm)) delete (vm as Record<string, unknown>)[k];
        Object.assign(vm, structuredClone(config));
      },
    };
    let result: T;
    try {
      result = await fn(ctx);
      validateVm(vm, this.host(), await this.store.configs());
      for (const step of this.steps) await step.run(ctx);
      if (!before || serializeConfig(before) !== serializeConfig(vm)) await txn.write(home.config, serializeConfig(vm));
      await txn.commit();
    } catch (err) {
      if (noReturn) {
        // Finished by recovery (rolled forward while the QEMU uses what the change made).
        await this.recover(home).catch(() => undefined);
        throw new VmhostError("change-finished-by-recovery", `the change had taken effect when it failed (${(err as Error).message}); it was completed from its journal`, 500);
      }
      await txn.rollback().catch(() => undefined);
      for (const f of undo.reverse()) await f().catch(() => undefined);
      throw err;
    }
    this.store.invalidate(vm.id);
    const ref: VmRef = { id: vm.id, name: vm.name };
    if (before && before.name !== vm.name) this.supervisor.renamed(ref);
    if (opts.event) events.unshift(opts.event);
    for (const e of events) await this.supervisor.event(ref, e.type, e.message, e.data);
    this.emit("committed", before, vm);
    return { vm, result, messages: ctx.messages };
  }

  /**
   * Finishes or undoes the VM's interrupted change, if any (journaled as an event). A change that
   * had already taken effect in a running QEMU (it writes to images the change created: a live
   * checkpoint) is rolled forward, never back: rolling back would delete what the guest writes to.
   */
  async recover(home: VmHome): Promise<void> {
    const what = await recoverTransaction(home.txnDir, { rollForwardPrepared: (created) => this.inEffect(home.id, created) });
    if (what === "none") return;
    this.store.invalidate(home.id);
    const cfg = await this.store.get(home.id).catch(() => undefined);
    if (cfg) {
      await this.supervisor.event(cfg, "change-recovered", what === "rolled-forward" ? "an interrupted change was completed" : "an interrupted change was undone");
    }
  }

  /**
   * Whether files a change created are in use: a running QEMU of the VM has one of them open, or
   * (QEMU gone) one of the created overlays holds data the guest wrote.
   */
  private async inEffect(id: string, created: readonly string[]): Promise<boolean> {
    if (created.length === 0) return false;
    const mon = this.supervisor.monitorOf({ id });
    if (mon) {
      const nodes = await mon.queryNamedBlockNodes().catch(() => []);
      return nodes.some((n) => created.includes(n.file));
    }
    for (const f of created) if (f.endsWith(".qcow2") && (await overlayHasData(f))) return true;
    return false;
  }

  /**
   * At service start: every VM folder's interrupted change is finished or undone, folders of
   * creations that never committed are removed, and removals that were interrupted finish.
   */
  async recoverAll(vmsDir: string): Promise<void> {
    await mkdir(vmsDir, { recursive: true, mode: 0o700 });
    for (const entry of await readdir(vmsDir)) {
      if (entry.startsWith(".trash-")) {
        await finishRemoval(`${vmsDir}/${entry}`);
        continue;
      }
    }
    for (const id of await this.store.ids()) {
      const home = this.store.home(id);
      await this.recover(home);
      if (!(await pathExists(home.config))) {
        // A creation that never committed leaves only an empty folder (and what the rollback swept).
        const left = await readdir(home.dir).catch(() => [] as string[]);
        if (left.length === 0) await rm(home.dir, { recursive: true, force: true });
      }
    }
  }
}

/** Removing a VM: its folder is first renamed to `.trash-<id>` (atomic: the VM is gone at once), then deleted with what it listed. */
export async function finishRemoval(trashDir: string): Promise<void> {
  try {
    const plan = JSON.parse(await readFile(`${trashDir}/remove.json`, "utf8")) as { deleteFiles?: unknown };
    if (Array.isArray(plan.deleteFiles)) for (const f of plan.deleteFiles) if (typeof f === "string") await rm(f, { force: true, recursive: true });
  } catch {
    /* no plan: nothing outside the folder to delete */
  }
  await rm(trashDir, { recursive: true, force: true });
}
