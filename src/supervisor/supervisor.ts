import { spawn, type ChildProcess } from "node:child_process";
import { EventEmitter } from "node:events";
import { createReadStream, createWriteStream, openSync, closeSync } from "node:fs";
import { open, readFile, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import { createServer, createConnection } from "node:net";
import type { VmConfig, VmState, HardDisk } from "../model/schema.js";
import type { ConfigStore } from "../model/store.js";
import { RunPaths, type VmHome } from "../home/vm-home.js";
import { ensurePrivateDir } from "../home/layout.js";
import { buildArgv, diskBlockdev, storageDevice, type EngineOptions, type RuntimePaths } from "../engine/qemu/argv.js";
import { QEMU_IDS } from "../engine/qemu/layout.js";
import { QemuMonitor, type QemuRunState } from "../engine/qemu/monitor.js";
import type { QmpEvent } from "../engine/qemu/qmp.js";
import { VmhostError } from "../util/errors.js";
import { KeyedMutex } from "../util/mutex.js";
import { pathExists } from "../util/fs.js";
import { consoleTail, rotateIfLarge } from "./console-log.js";
import { ConsoleWatcher } from "./console-watch.js";
import { EventJournal, type VmEvent } from "./events.js";
import { findQemuProcesses, isSameProcessAlive, processCmdline, processStartTime, qemuQmpSocket, qemuUuid, sleep, waitForExit, type QemuProcess } from "./proc.js";
import { clearRuntime, readRuntime, readStatus, writeRuntime, writeStatus, type ExitRecord, type RuntimeRecord } from "./records.js";

/** A VM as events name it: its id (stable) and its name at the time. */
export interface VmRef {
  id: string;
  name: string;
}

/** The supervisor's events, typed (listeners key by `vm.id`; names change with rename). */
export interface SupervisorEvents {
  /** A VM's runtime state changed (Running, Paused, Off, Saved, ...). */
  state: [vm: VmRef, state: VmState];
  /** A QEMU is now supervised (started or adopted): guest sessions attach here. */
  attached: [vm: VmConfig, run: RunPaths];
  /** A QEMU is no longer supervised (gone, or the service is stopping). */
  detached: [vm: VmRef];
  /** An event was journaled. */
  "vm-event": [ev: VmEvent];
  /** A QMP event of a supervised QEMU. */
  "qmp-event": [vm: VmRef, ev: QmpEvent];
  /** A complete line the VM's serial console printed. */
  "console-line": [vm: VmRef, line: string];
}

/** What the supervisor needs from the host; passed in at construction. */
export interface EngineEnvironment {
  /** The QEMU binary and the UEFI code for Gen2 (host facts, resolved when first needed). */
  binaries(): Promise<{ qemuBinary: string; uefiCode(secureBoot: boolean): string }>;
  accelerator(): Promise<{ accel: "kvm" | "tcg"; reason: string }>;
  /** How QEMU is confined (its own user, the seccomp sandbox); applied at spawn. */
  confinement?(vm: VmConfig, home: VmHome): Promise<Confinement>;
}

/** Spawn-time confinement of a QEMU (engine/qemu/confine.ts decides it). */
export interface Confinement {
  uid?: number;
  gid?: number;
  /** Extra argv (e.g. -sandbox ...), appended. */
  argv: string[];
  /** Makes the run directory and the VM's files usable by that user before the spawn. */
  prepare?(run: RunPaths): Promise<void>;
}

/** What the supervisor asks of the guest (the integration services' side). */
export interface GuestPort {
  /** Asks the guest to shut down through its agent; true when the agent took the request. */
  requestShutdown(vmId: string): Promise<boolean>;
}

type Intent = "stop" | "turn-off" | "save" | undefined;
type ChildExit = { code: number | null; signal: NodeJS.Signals | null };

interface Running {
  vm: VmRef;
  home: VmHome;
  run: RunPaths;
  record: RuntimeRecord & { pid: number; startTime: number };
  mon: QemuMonitor;
  state: VmState;
  child?: ChildProcess;
  /** Known only for a QEMU this supervisor started (its child); adopted ones have none. */
  childExit: () => ChildExit | undefined;
  childExited?: Promise<void>;
  shutdownReason?: string;
  /** Set when the VM was live-migrated away: the host it now runs on. */
  movedTo?: string;
  intent: Intent;
  console: ConsoleWatcher;
  gone: Promise<ExitRecord>;
  markGone: (r: ExitRecord) => void;
}

export interface VmRuntimeView {
  state: VmState;
  pid?: number;
  startedAt?: string;
  accel?: string;
  accelReason?: string;
  lastExit?: ExitRecord;
  hasSavedState: boolean;
}

/** How a start is done: from a machine-state file (a checkpoint's), paused, or as usual. */
export interface StartOptions {
  /** Restore this machine state (migration stream) instead of booting; the file is kept. */
  restoreFrom?: string;
  /** Leave the guest paused once QEMU is up (or the state is loaded). */
  paused?: boolean;
  /** Overrides of the configuration for this run only (e.g. a checkpoint's current overlays). */
  config?: VmConfig;
  /** Engine options the caller resolved for this run (the adapters' taps, from the switches). */
  extras?: Partial<EngineOptions>;
  /**
   * A live migration's destination: QEMU starts paused, waiting for the stream at `uri`
   * (over the TLS credentials object `tlsCredsId` when given, defined in `extras.objects`).
   */
  incoming?: { uri: string; tlsCredsId?: string };
}

const QMP_CONNECT_TIMEOUT_MS = 15_000;

function refOf(vm: { id: string; name: string }): VmRef {
  return { id: vm.id, name: vm.name };
}

/**
 * The host's one supervisor (libvirt/Incus style): starts QEMU detached so it outlives vmhost,
 * adopts running QEMUs when vmhost restarts (also one whose start was never recorded), notices
 * a QEMU that dies through its QMP connection closing (immediately), finishes or undoes a save
 * or state capture that a killed service left half done, and keeps console logs bounded.
 * Every QMP command goes through QemuMonitor's typed verbs (engine/qemu/monitor.ts).
 */
export class Supervisor extends EventEmitter<SupervisorEvents> {
  private readonly running = new Map<string, Running>();
  private readonly locks = new KeyedMutex();
  private rotateTimer?: NodeJS.Timeout;
  readonly journal: EventJournal;
  readonly store: ConfigStore;
  private readonly engine: EngineEnvironment;
  private readonly guest?: GuestPort;

  constructor(deps: { store: ConfigStore; engine: EngineEnvironment; guest?: GuestPort; journal?: EventJournal }) {
    super();
    this.store = deps.store;
    this.engine = deps.engine;
    this.guest = deps.guest;
    this.journal = deps.journal ?? new EventJournal();
  }

  /** Serialise operations on one VM (keyed by id, so a rename can never race). */
  withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  home(vm: { id: string }): VmHome {
    return this.store.home(vm.id);
  }

  /** The sockets of a running VM's QEMU, or undefined when it is not running. */
  runPaths(vm: { id: string }): RunPaths | undefined {
    return this.running.get(vm.id)?.run;
  }

  // ---- lifecycle of the supervisor itself -------------------------------------------

  /** Adopt every VM whose QEMU is still running; mark the rest Off with the reason. */
  async adoptAll(): Promise<void> {
    const configs = await this.store.configs();
    const qemus = await findQemuProcesses();
    await Promise.all(
      configs.map((vm) =>
        this.withLock(vm.id, () => this.adopt(vm, qemus)).catch((err: Error) => this.event(vm, "adopt-failed", `adopting the running QEMU failed: ${err.message}`)),
      ),
    );
    this.rotateTimer = setInterval(() => void this.rotateLogs(), 2000);
    this.rotateTimer.unref();
  }

  close(): void {
    if (this.rotateTimer) clearInterval(this.rotateTimer);
    for (const r of this.running.values()) {
      r.console.stop();
      r.mon.close();
      this.emit("detached", r.vm);
    }
    this.running.clear();
  }

  /**
   * Finds this VM's live QEMU: the recorded pid, else the pid file in its run directory (a start
   * the service did not finish recording), else any QEMU started with `-uuid <id>`.
   */
  private async findQemu(vm: VmConfig, record: RuntimeRecord | undefined, qemus: QemuProcess[]): Promise<QemuProcess | undefined> {
    // This VM's QEMU started by this home: its id and its QMP socket in this home's run
    // directory (another home on the same machine, e.g. a migration's other end, has its own).
    const runRoot = this.store.runRoot.endsWith("/") ? this.store.runRoot : this.store.runRoot + "/";
    const ours = (p: QemuProcess) => qemuUuid(p.argv) === vm.id.toLowerCase() && (qemuQmpSocket(p.argv) ?? "").startsWith(runRoot);
    if (record?.pid && record.startTime !== undefined && (await isSameProcessAlive(record.pid, record.startTime))) {
      const argv = await processCmdline(record.pid);
      const p = { pid: record.pid, startTime: record.startTime, argv };
      if (ours(p)) return p;
    }
    if (record) {
      const pid = Number((await readFileText(new RunPaths(record.runDir).pidFile)).trim());
      if (pid > 0) {
        const startTime = await processStartTime(pid);
        const p = startTime === undefined ? undefined : { pid, startTime, argv: await processCmdline(pid) };
        if (p && ours(p)) return p;
      }
    }
    return qemus.find(ours);
  }

  private async adopt(vm: VmConfig, qemus: QemuProcess[]): Promise<void> {
    const home = this.home(vm);
    let record: RuntimeRecord | undefined;
    try {
      record = await readRuntime(home);
    } catch {
      record = undefined;
    }
    const found = await this.findQemu(vm, record, qemus);
    if (!found) {
      await rm(home.savedStatePartial, { force: true });
      if (record) {
        await this.recordExit(vm, home, record.phase === "starting" ? "the start was interrupted and QEMU is not running" : "QEMU exited while vmhost was not watching", true);
        await clearRuntime(home);
        // Only now is nothing of this VM alive: its run directory can go.
        await rm(record.runDir, { recursive: true, force: true }).catch(() => undefined);
      }
      return;
    }
    const qmpSocket = qemuQmpSocket(found.argv) ?? new RunPaths(record?.runDir ?? home.runDir).qmpSocket;
    const run = new RunPaths(record?.runDir ?? qmpSocket.replace(/\/qmp\.sock$/, ""));
    const accel = record?.accel ?? (found.argv.some((a) => a.includes("accel=kvm")) ? "kvm" : "tcg");
    const full = {
      phase: "running" as const,
      startedAt: record?.startedAt ?? new Date().toISOString(),
      runDir: run.dir,
      accel,
      ...(record?.accelReason ? { accelReason: record.accelReason } : {}),
      ...(record?.operation ? { operation: record.operation } : {}),
      pid: found.pid,
      startTime: found.startTime,
    };
    await writeRuntime(home, full);
    const mon = await QemuMonitor.connect(run.qmpSocket);
    const r = this.track(vm, home, run, full, mon);
    r.state = stateOf((await mon.queryStatus()).status);
    await this.event(vm, "adopted", `running QEMU (pid ${found.pid}) adopted; state ${r.state}${record?.phase === "starting" || !record ? " (its start had not been recorded)" : ""}`);
    if (full.operation) await this.finishInterrupted(r, full.operation);
  }

  /**
   * A service killed during a save or a state capture left the guest paused: a save whose
   * state file is complete is finished (QEMU quits, the VM is Saved); anything else is undone
   * (the migration cancelled, the partial file removed, the guest running again).
   */
  private async finishInterrupted(r: Running, op: NonNullable<RuntimeRecord["operation"]>): Promise<void> {
    if (op.kind === "save" && (await pathExists(r.home.savedState))) {
      r.intent = "save";
      await this.event(r.vm, "save-finished", "a save interrupted by a service restart had completed; QEMU is stopped now");
      await r.mon.quit().catch(() => undefined);
      await Promise.race([r.gone, sleep(10_000)]);
      if (this.running.has(r.vm.id)) await this.killHard(r);
      return;
    }
    const info = await r.mon.queryMigrate().catch(() => ({ status: undefined }));
    if (info.status === "active" || info.status === "setup") await r.mon.migrateCancel().catch(() => undefined);
    await rm(r.home.savedStatePartial, { force: true });
    // A complete state file is the change journal's to keep or drop (it rolls the change forward or back).
    if (op.file) await rm(`${op.file}.partial`, { force: true });
    await unlink(r.run.migrationSocket).catch(() => undefined);
    if (op.wasRunning) {
      await this.resumeAfterMigration(r);
      this.setState(r, "Running");
    } else this.setState(r, "Paused");
    await this.clearOperation(r);
    await this.event(r.vm, op.kind === "save" ? "save-interrupted" : "capture-interrupted", `the ${op.kind === "save" ? "save" : "state capture"} started at ${op.since} was interrupted by a service restart; it was undone and the guest is ${op.wasRunning ? "running" : "paused"} again`);
  }

  private async rotateLogs(): Promise<void> {
    for (const r of this.running.values()) await rotateIfLarge(r.home.consoleLog).catch(() => undefined);
  }

  // ---- state -----------------------------------------------------------------------

  isRunning(id: string): boolean {
    return this.running.has(id);
  }

  /** A running VM's name changed (Rename-VM): events and views use the new one. */
  renamed(vm: VmRef): void {
    const r = this.running.get(vm.id);
    if (r) r.vm.name = vm.name;
  }

  async view(vm: VmConfig): Promise<VmRuntimeView> {
    const r = this.running.get(vm.id);
    const home = this.home(vm);
    const hasSavedState = await pathExists(home.savedState);
    if (r) {
      return { state: r.state, pid: r.record.pid, startedAt: r.record.startedAt, accel: r.record.accel, accelReason: r.record.accelReason, hasSavedState };
    }
    const status = await readStatus(home).catch(() => ({}) as { lastExit?: ExitRecord });
    return { state: hasSavedState ? "Saved" : "Off", lastExit: status.lastExit, hasSavedState };
  }

  stateOf(vm: { id: string }): VmState | undefined {
    return this.running.get(vm.id)?.state;
  }

  /** The state of any VM: a running one's, else Saved when a saved state waits, else Off. */
  async state(vm: { id: string }): Promise<VmState> {
    return this.stateOf(vm) ?? ((await pathExists(this.home(vm).savedState)) ? "Saved" : "Off");
  }

  private requireRunning(vm: { id: string; name: string }, ...states: VmState[]): Running {
    const r = this.running.get(vm.id);
    if (!r) throw new VmhostError("invalid-state", `VM "${vm.name}" is not running`, 409);
    if (states.length && !states.includes(r.state)) {
      throw new VmhostError("invalid-state", `VM "${vm.name}" is ${r.state}; this needs it ${states.join(" or ")}`, 409);
    }
    return r;
  }

  // ---- start ---------------------------------------------------------------------

  /**
   * Starts the VM's QEMU: boots it, or restores its saved state (Save-VM) or a given state file.
   * The runtime record is written before the spawn, so a service killed at any moment finds
   * the QEMU again. Never removes the run directory of a live QEMU.
   */
  async start(stored: VmConfig, opts: StartOptions = {}): Promise<VmState> {
    const vm = opts.config ?? stored;
    if (this.running.has(vm.id)) {
      throw new VmhostError("invalid-state", `VM "${vm.name}" is already ${this.running.get(vm.id)!.state}`, 409);
    }
    const home = this.home(vm);
    const live = await this.findQemu(vm, await readRuntime(home).catch(() => undefined), await findQemuProcesses());
    if (live) throw new VmhostError("invalid-state", `a QEMU of VM "${vm.name}" is running already (pid ${live.pid}) but is not supervised; restart vmhostd to adopt it`, 409);
    const restoreFile = opts.restoreFrom ?? ((await pathExists(home.savedState)) ? home.savedState : undefined);
    const fromSaved = restoreFile !== undefined && opts.restoreFrom === undefined;
    await rm(home.savedStatePartial, { force: true });
    const run = home.run;
    await rm(run.dir, { recursive: true, force: true });
    await ensurePrivateDir(run.dir);
    const { qemuBinary, uefiCode } = await this.engine.binaries();
    const paths: RuntimePaths = {
      qmpSocket: run.qmpSocket,
      serialSocket: run.serialSocket,
      agentSocket: run.agentSocket,
      pidFile: run.pidFile,
      consoleLog: home.consoleLog,
      nvram: vm.generation === 2 ? home.nvram : undefined,
      biosSerialConsole: vm.generation === 1 ? run.biosSerialConsole : undefined,
      vncSocket: vm.display ? run.vncSocket : undefined,
    };
    if (paths.biosSerialConsole) await writeFile(paths.biosSerialConsole, Buffer.from([0xf8, 0x03]), { mode: 0o600 });
    const { accel, reason } = await this.engine.accelerator();
    const extras = opts.extras ?? {};
    const opts2: EngineOptions = {
      accel,
      uefiCode: vm.generation === 2 ? uefiCode(vm.firmware.secureBoot) : undefined,
      secureBoot: vm.generation === 2 && vm.firmware.secureBoot,
      ...extras,
      incoming: restoreFile || opts.incoming ? "defer" : undefined,
      paused: opts.incoming !== undefined || (opts.paused === true && !restoreFile),
    };
    const confinement = (await this.engine.confinement?.(vm, home)) ?? { argv: [] };
    const argv = [...buildArgv(vm, paths, opts2), ...confinement.argv];
    await confinement.prepare?.(run);

    const startedAt = new Date().toISOString();
    await writeRuntime(home, { phase: "starting", startedAt, runDir: run.dir, accel, accelReason: reason });
    // The console log is appended to across runs: this run's output starts at its current end.
    const consoleFrom = await stat(home.consoleLog).then((st) => st.size, () => 0);
    const logFd = openSync(home.qemuLog, "w", 0o600);
    let child: ChildProcess;
    try {
      child = spawn(qemuBinary, argv, {
        detached: true,
        stdio: ["ignore", logFd, logFd],
        ...(confinement.uid !== undefined ? { uid: confinement.uid } : {}),
        ...(confinement.gid !== undefined ? { gid: confinement.gid } : {}),
      });
    } finally {
      closeSync(logFd);
    }
    child.unref();
    let childExit: ChildExit | undefined;
    const childExited = new Promise<void>((resolve) => {
      child.once("exit", (code, signal) => {
        childExit = { code, signal };
        resolve();
      });
      child.once("error", () => resolve());
    });

    const mon = await this.connectMonitor(run.qmpSocket, () => childExit !== undefined).catch(async (err: Error) => {
      await sleep(50);
      const tail = (await consoleTail(home.qemuLog, 5)).join("\n");
      if (childExit === undefined && child.pid) process.kill(child.pid, "SIGKILL");
      await clearRuntime(home);
      throw new VmhostError("start-failed", `QEMU did not start: ${tail || err.message}`, 500);
    });
    const pid = child.pid!;
    const record = { phase: "running" as const, pid, startTime: (await processStartTime(pid)) ?? 0, startedAt, runDir: run.dir, accel, accelReason: reason };
    await writeRuntime(home, record);
    const r = this.track(vm, home, run, record, mon, child, childExited, () => childExit, consoleFrom);
    r.state = restoreFile || opts.incoming ? "Starting" : opts.paused ? "Paused" : "Running";
    await this.event(vm, "started", `started under ${accel.toUpperCase()} (${reason})${opts.incoming ? ", waiting for a live migration" : ""}`);
    if (opts.incoming) {
      try {
        if (opts.incoming.tlsCredsId) await mon.migrateSetParameters({ "tls-creds": opts.incoming.tlsCredsId });
        await mon.migrateIncoming(opts.incoming.uri);
      } catch (err) {
        await this.killHard(r);
        throw new VmhostError("migration-failed", `the destination QEMU could not wait for the migration: ${(err as Error).message}`, 500);
      }
      return r.state;
    }

    if (restoreFile) {
      try {
        await this.restoreState(r, restoreFile, opts.paused ?? false);
      } catch (err) {
        await this.killHard(r);
        throw new VmhostError("restore-failed", `restoring the machine state failed: ${(err as Error).message}; the state file was kept`, 500);
      }
      if (fromSaved) {
        await rm(home.savedState, { force: true });
        await this.event(vm, "restored", "saved state restored");
      } else await this.event(vm, "restored", "machine state restored");
    }
    return r.state;
  }

  private async connectMonitor(path: string, exited: () => boolean): Promise<QemuMonitor> {
    const deadline = Date.now() + QMP_CONNECT_TIMEOUT_MS;
    let last: Error = new Error("timed out");
    while (Date.now() < deadline) {
      if (exited()) throw new Error("QEMU exited during start");
      try {
        return await QemuMonitor.connect(path, 5000);
      } catch (err) {
        last = err as Error;
        await sleep(10);
      }
    }
    throw last;
  }

  private track(
    vm: VmConfig,
    home: VmHome,
    run: RunPaths,
    record: Running["record"],
    mon: QemuMonitor,
    child?: ChildProcess,
    childExited?: Promise<void>,
    exitInfo: () => ChildExit | undefined = () => undefined,
    consoleFrom?: number,
  ): Running {
    let markGone!: (r: ExitRecord) => void;
    const gone = new Promise<ExitRecord>((resolve) => (markGone = resolve));
    const ref = refOf(vm);
    const r: Running = {
      vm: ref,
      home,
      run,
      record,
      mon,
      state: "Running",
      child,
      childExit: exitInfo,
      childExited,
      intent: undefined,
      console: new ConsoleWatcher(home.consoleLog, (line) => this.emit("console-line", ref, line)),
      gone,
      markGone,
    };
    this.running.set(vm.id, r);
    this.emit("attached", vm, run);
    void r.console.start(consoleFrom ?? true);
    mon.on("event", (ev: QmpEvent) => this.onQmpEvent(r, ev));
    mon.once("close", () => void this.onQemuGone(r));
    return r;
  }

  private onQmpEvent(r: Running, ev: QmpEvent): void {
    switch (ev.event) {
      case "STOP":
        if (r.intent !== "save" && r.state !== "Stopping" && !r.record.operation) this.setState(r, "Paused");
        break;
      case "RESUME":
        this.setState(r, "Running");
        break;
      case "SHUTDOWN":
        r.shutdownReason = String(ev.data?.["reason"] ?? "");
        this.setState(r, "Stopping");
        break;
      case "RESET":
        if (ev.data?.["guest"] === true) void this.event(r.vm, "reset", "the guest reset itself");
        break;
      case "POWERDOWN":
        void this.event(r.vm, "acpi-power-button", "ACPI power button pressed");
        break;
    }
    this.emit("qmp-event", r.vm, ev);
  }

  private setState(r: Running, state: VmState): void {
    if (r.state === state) return;
    r.state = state;
    this.emit("state", r.vm, state);
  }

  /** QMP closed: QEMU is gone (or going). Work out why, record it, and show Off or Saved. */
  private async onQemuGone(r: Running): Promise<void> {
    if (r.childExited) await Promise.race([r.childExited, sleep(1000)]);
    else await waitForExit(r.record.pid, r.record.startTime, 1000);
    const reason = this.exitReason(r);
    r.console.stop();
    this.running.delete(r.vm.id);
    this.emit("detached", r.vm);
    const saved = r.intent === "save" && (await pathExists(r.home.savedState));
    const exit = await this.recordExit(r.vm, r.home, saved ? "state saved" : reason, !saved && r.intent === undefined);
    await clearRuntime(r.home).catch(() => undefined);
    await rm(r.home.savedStatePartial, { force: true }).catch(() => undefined);
    await rm(r.run.dir, { recursive: true, force: true }).catch(() => undefined);
    this.emit("state", r.vm, saved ? "Saved" : "Off");
    r.markGone(exit);
  }

  private exitReason(r: Running): string {
    const sr = r.shutdownReason;
    const ce = r.childExit();
    if (r.movedTo) return `moved to ${r.movedTo} (live migration)`;
    if (r.intent === "turn-off") return "turned off";
    if (sr === "guest-shutdown") return "the guest shut down";
    if (sr === "guest-panic") return "the guest kernel panicked";
    if (sr === "host-qmp-quit") return "turned off";
    if (sr === "host-signal") return "QEMU was stopped by a signal (SIGTERM/SIGINT/SIGHUP)";
    if (sr === "guest-reset") return "the guest reset with reboot disabled";
    if (ce?.signal) return `QEMU was killed by ${ce.signal}`;
    if (ce && ce.code !== 0 && ce.code !== null) return `QEMU exited with status ${ce.code}`;
    if (sr) return `QEMU shut down (${sr})`;
    return ce ? "QEMU exited without a shutdown request" : "QEMU exited unexpectedly (no shutdown event: killed or crashed)";
  }

  private async recordExit(vm: VmRef, home: VmHome, reason: string, unexpected: boolean): Promise<ExitRecord> {
    const qemuLines = unexpected ? await consoleTail(home.qemuLog, 3) : [];
    const exit: ExitRecord = {
      at: new Date().toISOString(),
      reason: qemuLines.length && /exited with status/.test(reason) ? `${reason}: ${qemuLines.join(" | ")}` : reason,
      consoleTail: await consoleTail(home.consoleLog, 10),
    };
    await writeStatus(home, { lastExit: exit }).catch(() => undefined);
    await this.event(vm, unexpected ? "exited" : "off", `Off: ${exit.reason}`);
    return exit;
  }

  /** Journals an event for the VM and tells listeners ("vm-event"). */
  async event(vm: VmRef, type: string, message: string, data?: Record<string, unknown>): Promise<void> {
    const ev: VmEvent = { at: new Date().toISOString(), vmId: vm.id, vm: vm.name, type, message, ...(data ? { data } : {}) };
    this.emit("vm-event", ev);
    await this.journal.append(this.home(vm), ev);
  }

  // ---- operations on a running VM ----------------------------------------------------

  async pause(vm: VmRef): Promise<VmState> {
    const r = this.requireRunning(vm, "Running", "Paused");
    if (r.state === "Running") await r.mon.stop();
    this.setState(r, "Paused");
    return r.state;
  }

  async resume(vm: VmRef): Promise<VmState> {
    const r = this.requireRunning(vm, "Paused", "Running");
    if (r.state === "Paused") await this.resumeAfterMigration(r);
    this.setState(r, "Running");
    return r.state;
  }

  /** `cont`, also from "postmigrate" (after a state capture QEMU re-activates its block nodes on cont). */
  private async resumeAfterMigration(r: Running): Promise<void> {
    const s = (await r.mon.queryStatus()).status;
    if (s !== "running") await r.mon.cont();
  }

  /** Hard reset, as Hyper-V's Reset-VM. */
  async restart(vm: VmRef): Promise<VmState> {
    const r = this.requireRunning(vm, "Running", "Paused");
    await r.mon.systemReset();
    if (r.state === "Paused") await r.mon.cont();
    this.setState(r, "Running");
    await this.event(vm, "restart", "reset by the host");
    return r.state;
  }

  /** Guest shutdown through the agent or the ACPI power button; with force, turned off after the timeout. */
  async stop(vm: VmRef, opts: { force: boolean; timeoutMs: number }): Promise<{ state: VmState; forced: boolean }> {
    const r = this.requireRunning(vm);
    if (r.state === "Paused" && !opts.force) {
      throw new VmhostError("invalid-state", `VM "${vm.name}" is Paused: resume it first, or use --force to turn it off`, 409);
    }
    if (r.state === "Paused") {
      await this.turnOffRunning(r);
      return { state: "Off", forced: true };
    }
    r.intent = "stop";
    // The Shutdown integration service when the guest agent takes the request, else ACPI.
    const viaAgent = (await this.guest?.requestShutdown(vm.id).catch(() => false)) ?? false;
    this.setState(r, "Stopping");
    await this.event(vm, "stop", `shutdown requested through ${viaAgent ? "the guest agent (Shutdown integration service)" : "the ACPI power button"}`, {
      method: viaAgent ? "agent" : "acpi",
    });
    if (!viaAgent) await r.mon.systemPowerdown().catch(() => undefined);
    const done = await Promise.race([r.gone.then(() => true), sleep(opts.timeoutMs).then(() => false)]);
    if (done) return { state: "Off", forced: false };
    if (!opts.force) {
      r.intent = undefined;
      if (this.running.has(vm.id)) this.setState(r, await r.mon.queryStatus().then((s) => stateOf(s.status), () => "Running" as VmState));
      throw new VmhostError(
        "shutdown-timeout",
        `the guest did not shut down within ${Math.round(opts.timeoutMs / 1000)} s (${viaAgent ? "its guest agent took the request" : "does it handle the ACPI power button?"}); use --force to turn it off`,
        409,
      );
    }
    await this.turnOffRunning(r);
    return { state: "Off", forced: true };
  }

  /** Turn-Off: QEMU quits at once (a saved state is discarded when the VM is Saved). */
  async turnOff(vm: VmRef): Promise<VmState> {
    const r = this.running.get(vm.id);
    if (!r) {
      const home = this.home(vm);
      if (await pathExists(home.savedState)) {
        await rm(home.savedState, { force: true });
        await this.event(vm, "saved-state-discarded", "saved state discarded by turn-off");
      }
      return "Off";
    }
    await this.turnOffRunning(r);
    return "Off";
  }

  private async turnOffRunning(r: Running): Promise<void> {
    r.intent = "turn-off";
    await r.mon.quit().catch(() => undefined);
    const ok = await Promise.race([r.gone.then(() => true), sleep(5000).then(() => false)]);
    if (!ok) await this.killHard(r);
  }

  private async killHard(r: Running): Promise<void> {
    try {
      if (await isSameProcessAlive(r.record.pid, r.record.startTime)) process.kill(r.record.pid, "SIGKILL");
    } catch {
      /* already gone */
    }
    await Promise.race([r.gone, sleep(5000)]);
  }

  private async setOperation(r: Running, op: RuntimeRecord["operation"]): Promise<void> {
    r.record = { ...r.record, operation: op };
    await writeRuntime(r.home, r.record);
  }

  private async clearOperation(r: Running): Promise<void> {
    const { operation: _op, ...rest } = r.record;
    r.record = rest;
    await writeRuntime(r.home, r.record);
  }

  /**
   * Streams the machine state (RAM, devices and the UEFI flash) of a paused QEMU into `file`
   * through QEMU's migration (`migrate unix:` to a socket vmhostd serves). The file appears only
   * when complete (written as `.partial`, fsynced unless `sync: false`, renamed). Stale sockets are
   * removed first.
   */
  private async migrateToFile(r: Running, file: string, opts: { sync?: boolean; parametersSet?: boolean } = {}): Promise<void> {
    const tmp = `${file}.partial`;
    const sock = r.run.migrationSocket;
    await unlink(sock).catch(() => undefined);
    await rm(tmp, { force: true });
    const out = createWriteStream(tmp, { mode: 0o600 });
    let received: Promise<void> = Promise.resolve();
    const server = createServer((conn) => {
      received = new Promise<void>((resolve, reject) => {
        conn.pipe(out);
        out.on("finish", resolve);
        out.on("error", reject);
        conn.on("error", reject);
      });
    });
    await new Promise<void>((resolve, reject) => server.listen(sock, resolve).once("error", reject));
    try {
      if (!opts.parametersSet) await r.mon.migrateSetParameters({ "max-bandwidth": 10 * 1024 * 1024 * 1024, "tls-creds": "" });
      await r.mon.migrate(`unix:${sock}`);
      const info = await this.waitMigration(r.mon, 600_000);
      if (info.status !== "completed") throw new Error(`migration ${info.status ?? "failed"}${info["error-desc"] ? `: ${info["error-desc"]}` : ""}`);
      await received;
      if (opts.sync !== false) {
        const fh = await open(tmp, "r+");
        await fh.sync();
        await fh.close();
      }
      await rename(tmp, file);
    } catch (err) {
      out.destroy();
      await rm(tmp, { force: true });
      throw err;
    } finally {
      server.close();
      await unlink(sock).catch(() => undefined);
    }
  }

  /**
   * Save (Save-VM): pause, stream the machine state to the VM's saved-state file, then stop QEMU.
   * The next start restores it. A save either completes or the guest runs again (also after a
   * service killed half way: finishInterrupted).
   */
  async save(vm: VmRef): Promise<VmState> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const wasRunning = r.state === "Running";
    r.intent = "save";
    await this.setOperation(r, { kind: "save", since: new Date().toISOString(), wasRunning });
    this.setState(r, "Saving");
    try {
      await r.mon.stop();
      await this.migrateToFile(r, r.home.savedState);
    } catch (err) {
      r.intent = undefined;
      if (wasRunning) await this.resumeAfterMigration(r).catch(() => undefined);
      await this.clearOperation(r).catch(() => undefined);
      this.setState(r, wasRunning ? "Running" : "Paused");
      throw new VmhostError("save-failed", `saving the state failed: ${(err as Error).message}; the VM keeps ${wasRunning ? "running" : "paused"}`, 500);
    }
    await this.event(vm, "saved", "state saved");
    await r.mon.quit().catch(() => undefined);
    await Promise.race([r.gone, sleep(10_000)]);
    if (this.running.has(vm.id)) await this.killHard(r);
    return "Saved";
  }

  /**
   * The guest paused for `fn` (a checkpoint's disk snapshot and NVRAM copy), then, when
   * `stateFile` is given, its machine state streamed to that file; then the guest runs again if
   * it ran before. Returns fn's result, how long the guest was paused (ms) and, when fn
   * succeeded but the state could not be written, why (`stateError`): fn's effect stands, so
   * the caller decides. A service killed meanwhile undoes the capture when it adopts the QEMU.
   */
  async withGuestPaused<T>(
    vm: VmRef,
    fn: (mon: QemuMonitor) => Promise<T>,
    stateFile?: string,
  ): Promise<{ result: T; pausedMs: number; phases: { stopMs: number; workMs: number; stateMs: number; resumeMs: number }; stateError?: Error }> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const wasRunning = r.state === "Running";
    await this.setOperation(r, { kind: "capture", since: new Date().toISOString(), wasRunning, ...(stateFile ? { file: stateFile } : {}) });
    // Set before the guest stops, so the pause holds only the work itself.
    if (stateFile) await r.mon.migrateSetParameters({ "max-bandwidth": 10 * 1024 * 1024 * 1024, "tls-creds": "" });
    await unlink(r.run.migrationSocket).catch(() => undefined);
    const t0 = performance.now();
    let result: T;
    let stateError: Error | undefined;
    let pausedMs = 0;
    const marks = { stopped: t0, worked: t0, stated: t0 };
    try {
      if (wasRunning) await r.mon.stop();
      marks.stopped = marks.worked = marks.stated = performance.now();
      result = await fn(r.mon);
      marks.worked = marks.stated = performance.now();
      if (stateFile) {
        try {
          // Not synced while the guest waits: the caller's commit makes it durable after the guest runs again.
          await this.migrateToFile(r, stateFile, { sync: false, parametersSet: true });
        } catch (err) {
          stateError = err as Error;
        }
        marks.stated = performance.now();
      }
    } finally {
      if (wasRunning) await this.resumeAfterMigration(r).catch(() => undefined);
      pausedMs = performance.now() - t0;
      await this.clearOperation(r).catch(() => undefined);
    }
    this.setState(r, wasRunning ? "Running" : "Paused");
    const phases = { stopMs: marks.stopped - t0, workMs: marks.worked - marks.stopped, stateMs: marks.stated - marks.worked, resumeMs: t0 + pausedMs - marks.stated };
    return { result, pausedMs, phases, ...(stateError ? { stateError } : {}) };
  }

  private async waitMigration(mon: QemuMonitor, timeoutMs: number) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = await mon.queryMigrate();
      if (m.status === "completed" || m.status === "failed" || m.status === "cancelled") return m;
      if (Date.now() > deadline) return { ...m, status: "failed" as const, "error-desc": "timed out" };
      await sleep(5);
    }
  }

  private async restoreState(r: Running, file: string, paused: boolean): Promise<void> {
    const sock = r.run.incomingSocket;
    await unlink(sock).catch(() => undefined);
    await r.mon.migrateIncoming(`unix:${sock}`);
    await new Promise<void>((resolve, reject) => {
      const conn = createConnection(sock);
      conn.once("error", reject);
      conn.once("connect", () => {
        const input = createReadStream(file);
        input.once("error", reject);
        input.pipe(conn);
        conn.once("close", () => resolve());
      });
    });
    const deadline = Date.now() + 600_000;
    for (;;) {
      const s = await r.mon.queryStatus();
      if (s.status !== "inmigrate") break;
      if (Date.now() > deadline) throw new Error("the state did not load in time");
      await sleep(20);
    }
    const s = (await r.mon.queryStatus()).status;
    if (s !== "paused" && s !== "postmigrate" && s !== "prelaunch" && s !== "running") throw new Error(`QEMU is ${s} after loading the state`);
    if (!paused && s !== "running") await r.mon.cont();
    this.setState(r, paused ? "Paused" : "Running");
  }

  // ---- live migration (Move-VM) -------------------------------------------------------------

  /**
   * Destination side: exports the incoming VM's disks over NBD (writable) at host:port for the
   * source's drive-mirror (qemu-iotests 194's sequence), one export per disk named by its slot
   * key; over TLS when `tlsCredsId` is given. Returns the export names by slot.
   */
  async exportDisks(vm: VmRef, disks: { slot: string; exportName: string }[], addr: { host: string; port: string }, tlsCredsId?: string): Promise<void> {
    const r = this.requireRunning(vm);
    const blocks = await r.mon.queryBlock();
    await r.mon.nbdServerStart({ type: "inet", host: addr.host, port: addr.port }, tlsCredsId);
    for (const d of disks) {
      const root = rootNodeOfSlot(blocks, d.slot);
      if (!root) throw new VmhostError("migration-failed", `the destination QEMU has no drive at ${d.slot}`, 500);
      await r.mon.blockExportAdd(d.exportName, root, true);
    }
  }

  /**
   * Destination side, once the source says the migration completed: the NBD server goes and the
   * guest runs here (the UEFI flash from the stream is written to this host's NVRAM file now).
   */
  async finishIncoming(vm: VmRef): Promise<VmState> {
    const r = this.requireRunning(vm);
    // The source's QEMU reports completion when it has sent the last byte; this one may still be loading it.
    let s = (await r.mon.queryStatus()).status;
    for (const deadline = Date.now() + 60_000; s === "inmigrate" && Date.now() < deadline; s = (await r.mon.queryStatus()).status) await sleep(20);
    if (s === "inmigrate") throw new VmhostError("migration-failed", `VM "${vm.name}" has not received the whole migration stream (QEMU is ${s})`, 409);
    await r.mon.nbdServerStop().catch(() => undefined);
    // The move's TLS credentials are for this stream only: later migrations (a save, a checkpoint's memory) go plain to local sockets.
    await r.mon.migrateSetParameters({ "tls-creds": "" }).catch(() => undefined);
    await r.mon.objectDel("vmhost-mig-tls").catch(() => undefined);
    await r.mon.cont();
    this.setState(r, "Running");
    await this.event(vm, "migrated-in", "live migration finished: the guest runs on this host");
    return r.state;
  }

  /**
   * Source side: mirrors the disks to the destination's NBD exports (when storage moves), then
   * migrates memory and devices to `uri`, then ends the mirrors (cancelled once in sync, never
   * completed: that would switch the source to the copies). Returns QEMU's figures (downtime,
   * total time in ms). The guest is left paused here (postmigrate) on success; on any failure
   * everything is undone and the guest runs here as before.
   */
  async migrateOut(
    vm: VmRef,
    p: {
      uri: string;
      tls?: { dir: string; hostname: string };
      mirrors?: { slot: string; host: string; port: string; exportName: string; sync: "full" | "top" }[];
      downtimeLimitMs?: number;
      onProgress?: (phase: "storage" | "memory", fraction: number) => void;
    },
  ): Promise<{ downtimeMs?: number; totalMs?: number; setupMs?: number; mirroredBytes: number }> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const mon = r.mon;
    const wasRunning = r.state === "Running";
    const tlsId = "vmhost-mig-tls";
    const targets: string[] = [];
    const jobs: string[] = [];
    let mirroredBytes = 0;
    try {
      if (p.tls) {
        await mon.objectDel(tlsId).catch(() => undefined);
        await mon.objectAddTlsCreds(tlsId, p.tls.dir, "client");
        await mon.migrateSetParameters({ "tls-creds": tlsId, "tls-hostname": p.tls.hostname });
      } else await mon.migrateSetParameters({ "tls-creds": "" });
      await mon.migrateSetParameters({ "max-bandwidth": 10 * 1024 * 1024 * 1024, ...(p.downtimeLimitMs ? { "downtime-limit": p.downtimeLimitMs } : {}) });
      if (p.mirrors?.length) {
        const blocks = await mon.queryBlock();
        for (const m of p.mirrors) {
          const root = rootNodeOfSlot(blocks, m.slot);
          if (!root) throw new Error(`no drive at ${m.slot}`);
          const target = `mig-${m.exportName}`;
          await mon.blockdevAdd({ driver: "nbd", "node-name": target, server: { type: "inet", host: m.host, port: m.port }, export: m.exportName, ...(p.tls ? { "tls-creds": tlsId } : {}) });
          targets.push(target);
          const job = `vmhost-mirror-${m.exportName}`;
          await mon.blockdevMirror(job, root, target, m.sync);
          jobs.push(job);
        }
        // Wait until every mirror is in sync (ready): from then on guest writes go to both sides.
        for (;;) {
          const all = await mon.queryJobs();
          const mine = all.filter((j) => jobs.includes(j.id));
          const failed = mine.find((j) => j.status === "concluded" || j.error);
          if (failed) throw new Error(`mirroring ${failed.id} failed${failed.error ? `: ${failed.error}` : ""}`);
          const total = mine.reduce((a, j) => a + j["total-progress"], 0);
          const done = mine.reduce((a, j) => a + j["current-progress"], 0);
          p.onProgress?.("storage", total ? done / total : 1);
          if (mine.length === jobs.length && mine.every((j) => j.status === "ready")) {
            mirroredBytes = total;
            break;
          }
          await sleep(50);
        }
      }
      await mon.migrate(p.uri);
      let info;
      for (;;) {
        info = await mon.queryMigrate();
        if (info.status === "completed") break;
        if (info.status === "failed" || info.status === "cancelled") throw new Error(`migration ${info.status}${info["error-desc"] ? `: ${info["error-desc"]}` : ""}`);
        if (info.ram && info.ram.total) p.onProgress?.("memory", Math.min(1, info.ram.transferred / info.ram.total));
        await sleep(20);
      }
      this.setState(r, "Paused");
      // The copies are complete: end the mirrors without switching to them.
      for (const j of jobs) await mon.blockJobCancel(j).catch(() => undefined);
      await waitJobsGone(mon, jobs);
      for (const t of targets) await mon.blockdevDel(t).catch(() => undefined);
      return { downtimeMs: info.downtime, totalMs: info["total-time"], setupMs: (info as { "setup-time"?: number })["setup-time"], mirroredBytes };
    } catch (err) {
      await mon.migrateCancel().catch(() => undefined);
      for (const j of jobs) await mon.blockJobCancel(j, true).catch(() => undefined);
      await waitJobsGone(mon, jobs).catch(() => undefined);
      for (const t of targets) await mon.blockdevDel(t).catch(() => undefined);
      const s = await mon.queryStatus().catch(() => undefined);
      if (wasRunning && s && s.status !== "running") await mon.cont().catch(() => undefined);
      this.setState(r, wasRunning ? "Running" : "Paused");
      throw new VmhostError("migration-failed", `the live migration of VM "${vm.name}" failed: ${(err as Error).message}; it keeps running on this host`, 500);
    } finally {
      if (p.tls) await mon.migrateSetParameters({ "tls-creds": "" }).catch(() => undefined);
    }
  }

  /** Source side, after the destination runs the guest: this QEMU quits (the VM now lives elsewhere). */
  async releaseMigrated(vm: VmRef, where: string): Promise<void> {
    const r = this.requireRunning(vm);
    r.intent = "turn-off";
    r.movedTo = where;
    await r.mon.quit().catch(() => undefined);
    const ok = await Promise.race([r.gone.then(() => true), sleep(5000).then(() => false)]);
    if (!ok) await this.killHard(r);
  }

  // ---- devices on a running VM ----------------------------------------------------------

  async hotAddDisk(vm: VmRef, disk: HardDisk): Promise<void> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const node = QEMU_IDS.diskNode(disk.controllerType, disk.controllerNumber, disk.controllerLocation);
    await r.mon.blockdevAdd(diskBlockdev(disk));
    try {
      await r.mon.deviceAdd(storageDevice(disk, "hd", true));
    } catch (err) {
      await r.mon.blockdevDel(node).catch(() => undefined);
      throw new VmhostError("hotplug-failed", `adding the disk failed: ${(err as Error).message}`, 500);
    }
  }

  async hotRemoveDisk(vm: VmRef, disk: HardDisk): Promise<void> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const id = QEMU_IDS.disk(disk.controllerType, disk.controllerNumber, disk.controllerLocation);
    const deleted = r.mon.waitForEvent("DEVICE_DELETED", (d) => d.device === id, 10_000).catch(() => undefined);
    await r.mon.deviceDel(id);
    await deleted;
    await r.mon.blockdevDel(QEMU_IDS.diskNode(disk.controllerType, disk.controllerNumber, disk.controllerLocation));
  }

  /** Media change in a DVD or floppy drive of a running VM. */
  async changeMedium(
    vm: VmRef,
    drive: { kind: "floppy" } | { kind: "dvd"; controllerType: "IDE" | "SCSI"; controllerNumber: number; controllerLocation: number },
    path: string | null,
  ): Promise<void> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const id = drive.kind === "floppy" ? "fd0" : QEMU_IDS.disk(drive.controllerType, drive.controllerNumber, drive.controllerLocation);
    if (path === null) await r.mon.eject(id, true);
    else await r.mon.blockdevChangeMedium(id, path, "raw", drive.kind === "dvd" ? "read-only" : "retain");
  }

  /** The monitor of a running VM, for the engine-level work of checkpoints and migration (and tests). */
  monitorOf(vm: { id: string }): QemuMonitor | undefined {
    return this.running.get(vm.id)?.mon;
  }

  /** Seconds since the console last printed anything (for stall detection), or undefined when off. */
  consoleQuietSeconds(vm: { id: string }): number | undefined {
    const r = this.running.get(vm.id);
    return r ? (Date.now() - r.console.lastOutputAt) / 1000 : undefined;
  }

  /** What the console printed after its last newline (a prompt), or undefined when off. */
  consolePending(vm: { id: string }): string | undefined {
    return this.running.get(vm.id)?.console.pendingText();
  }

  runningPids(): number[] {
    return [...this.running.values()].map((r) => r.record.pid);
  }

  /** Ids of the VMs whose QEMU is supervised now. */
  runningIds(): string[] {
    return [...this.running.keys()];
  }
}

/** The root (active) node of the drive at `slot` ("SCSI 0:0"), from query-block. */
export function rootNodeOfSlot(blocks: { qdev?: string; inserted?: { "node-name": string } }[], slot: string): string | undefined {
  const m = /^(IDE|SCSI)\s*(\d+):(\d+)$/i.exec(slot.trim());
  if (!m) return undefined;
  const dev = QEMU_IDS.disk(m[1]!.toUpperCase() as "IDE" | "SCSI", Number(m[2]), Number(m[3]));
  return blocks.find((b) => b.qdev === dev || b.qdev?.endsWith(`/${dev}`) || b.qdev?.includes(`/${dev}/`))?.inserted?.["node-name"];
}

async function waitJobsGone(mon: QemuMonitor, ids: string[]): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const left = (await mon.queryJobs()).filter((j) => ids.includes(j.id));
    for (const j of left) if (j.status === "concluded" || j.status === "null") await mon.jobDismiss(j.id).catch(() => undefined);
    if (left.every((j) => j.status === "concluded" || j.status === "null")) return;
    await sleep(20);
  }
}

/** Hyper-V's state for a QEMU run state. */
export function stateOf(s: QemuRunState): VmState {
  switch (s) {
    case "running":
      return "Running";
    case "paused":
    case "suspended":
    case "postmigrate":
    case "io-error":
    case "guest-panicked":
    case "internal-error":
      return "Paused";
    case "inmigrate":
    case "prelaunch":
    case "restore-vm":
      return "Starting";
    case "finish-migrate":
    case "save-vm":
      return "Saving";
    case "shutdown":
      return "Stopping";
    default:
      return "Running";
  }
}

function readFileText(path: string): Promise<string> {
  return readFile(path, "utf8").catch(() => "");
}
