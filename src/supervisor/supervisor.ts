import { spawn, type ChildProcess } from "node:child_process";
import { EventEmitter } from "node:events";
import { createReadStream, createWriteStream, openSync, closeSync } from "node:fs";
import { mkdir, rename, rm, stat, open, writeFile } from "node:fs/promises";
import { createServer, createConnection } from "node:net";
import { join } from "node:path";
import type { VmConfig, VmState, HardDisk } from "../model/schema.js";
import type { ConfigStore } from "../model/store.js";
import { buildArgv, diskBlockdev, storageDevice, type EngineOptions, type RuntimePaths } from "../engine/qemu/argv.js";
import { QEMU_IDS } from "../engine/qemu/layout.js";
import { QmpClient, type QmpEvent } from "../engine/qemu/qmp.js";
import { VmhostError } from "../util/errors.js";
import { KeyedMutex } from "../util/mutex.js";
import { consoleTail, rotateIfLarge } from "./console-log.js";
import { ConsoleWatcher } from "./console-watch.js";
import { BootDiagnostics } from "./diagnostics/watch.js";
import { EventJournal, type VmEvent } from "./events.js";
import { isSameProcessAlive, processCmdline, processStartTime, sleep, waitForExit } from "./proc.js";
import {
  clearRuntime,
  readRuntime,
  readStatus,
  vmFiles,
  writeRuntime,
  writeStatus,
  type ExitRecord,
  type RuntimeRecord,
  type VmFiles,
} from "./records.js";
import { pathExists } from "../util/fs.js";

/** What the supervisor needs from the host; injected so it can be tested and stays engine-thin. */
export interface EngineEnvironment {
  qemuBinary: string;
  accelerator(): Promise<{ accel: "kvm" | "tcg"; reason: string }>;
  /** UEFI code for a Gen2 VM. */
  uefiCode(secureBoot: boolean): string;
  /** Extra engine options for a VM (networks, fw_cfg), resolved at start. */
  engineExtras?(vm: VmConfig): Promise<Partial<EngineOptions>>;
}

type Intent = "stop" | "turn-off" | "save" | undefined;
type ChildExit = { code: number | null; signal: NodeJS.Signals | null };

interface Running {
  id: string;
  name: string;
  files: VmFiles;
  record: RuntimeRecord;
  qmp: QmpClient;
  state: VmState;
  child?: ChildProcess;
  /** Known only for a QEMU this supervisor started (its child); adopted ones have none. */
  childExit: () => ChildExit | undefined;
  childExited?: Promise<void>;
  shutdownReason?: string;
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

const QMP_CONNECT_TIMEOUT_MS = 15_000;

/**
 * The host's one supervisor (libvirt/Incus style): starts QEMU detached so it outlives
 * vmhost, adopts running QEMUs when vmhost restarts, notices a QEMU that dies through its
 * QMP connection closing (immediately), and keeps console logs bounded.
 */
export class Supervisor extends EventEmitter {
  private readonly running = new Map<string, Running>();
  private readonly locks = new KeyedMutex();
  private rotateTimer?: NodeJS.Timeout;
  readonly journal: EventJournal;
  /** Boot diagnostics: known failure signatures and stalls on each VM's console (diagnostics/). */
  readonly diagnostics: BootDiagnostics;
  /**
   * Set by the integration services: asks the guest to shut down through its agent, true when
   * it took the request; stop falls back to the ACPI power button otherwise.
   */
  guestShutdown?: (vm: VmConfig) => Promise<boolean>;

  constructor(
    readonly store: ConfigStore,
    readonly runRoot: string,
    readonly env: EngineEnvironment,
  ) {
    super();
    this.journal = new EventJournal((n) => store.vmDir(n));
    this.diagnostics = new BootDiagnostics(this);
  }

  /** Serialise operations on one VM (keyed by id, so a rename could never race). */
  withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  files(name: string): VmFiles {
    return vmFiles(this.store.vmDir(name));
  }

  runDirFor(vm: { id: string }): string {
    return join(this.runRoot, vm.id.slice(0, 13));
  }

  runtimePaths(vm: VmConfig, runDir: string): RuntimePaths {
    const f = this.files(vm.name);
    return {
      qmpSocket: join(runDir, "qmp.sock"),
      serialSocket: join(runDir, "serial.sock"),
      agentSocket: join(runDir, "agent.sock"),
      pidFile: join(runDir, "qemu.pid"),
      consoleLog: f.consoleLog,
      nvram: vm.generation === 2 ? f.nvram : undefined,
      biosSerialConsole: vm.generation === 1 ? join(runDir, "sercon-port") : undefined,
    };
  }

  // ---- lifecycle of the supervisor itself -------------------------------------------

  /** Adopt every VM whose QEMU is still running; mark the rest Off with the reason. */
  async adoptAll(): Promise<void> {
    const configs = await this.store.configs();
    await Promise.all(configs.map((vm) => this.withLock(vm.id, () => this.adopt(vm)).catch(() => undefined)));
    this.rotateTimer = setInterval(() => void this.rotateLogs(), 2000);
    this.rotateTimer.unref();
  }

  close(): void {
    if (this.rotateTimer) clearInterval(this.rotateTimer);
    this.diagnostics.close();
    for (const r of this.running.values()) {
      r.console.stop();
      r.qmp.removeAllListeners("close");
      r.qmp.close();
      this.emit("detached", r.name, r.id);
    }
    this.running.clear();
  }

  private async adopt(vm: VmConfig): Promise<void> {
    const files = this.files(vm.name);
    let record: RuntimeRecord | undefined;
    try {
      record = await readRuntime(files);
    } catch {
      record = undefined;
    }
    if (!record) return;
    const alive = await isSameProcessAlive(record.pid, record.startTime);
    const cmd = alive ? await processCmdline(record.pid) : [];
    if (!alive || !cmd.includes(vm.id)) {
      await this.recordExit(vm.name, files, "QEMU exited while vmhost was not watching", true);
      await clearRuntime(files);
      return;
    }
    const qmp = await QmpClient.connect(join(record.runDir, "qmp.sock"));
    const r = this.track(vm, files, record, qmp);
    r.state = await this.queryState(r);
    await this.event(vm.name, "adopted", `running QEMU (pid ${record.pid}) adopted; state ${r.state}`);
  }

  private async rotateLogs(): Promise<void> {
    for (const r of this.running.values()) await rotateIfLarge(r.files.consoleLog).catch(() => undefined);
  }

  // ---- state -----------------------------------------------------------------------

  isRunning(id: string): boolean {
    return this.running.has(id);
  }

  async view(vm: VmConfig): Promise<VmRuntimeView> {
    const r = this.running.get(vm.id);
    const files = this.files(vm.name);
    const hasSavedState = await pathExists(files.savedState);
    if (r) {
      return {
        state: r.state,
        pid: r.record.pid,
        startedAt: r.record.startedAt,
        accel: r.record.accel,
        accelReason: r.record.accelReason,
        hasSavedState,
      };
    }
    const status = await readStatus(files).catch(() => ({}) as { lastExit?: ExitRecord });
    return { state: hasSavedState ? "Saved" : "Off", lastExit: status.lastExit, hasSavedState };
  }

  stateOf(vm: VmConfig): VmState | undefined {
    return this.running.get(vm.id)?.state;
  }

  /** The state of any VM: a running one's, else Saved when a saved state waits, else Off. */
  async state(vm: VmConfig): Promise<VmState> {
    return this.stateOf(vm) ?? ((await pathExists(this.files(vm.name).savedState)) ? "Saved" : "Off");
  }

  private async queryState(r: Running): Promise<VmState> {
    const s = await r.qmp.execute<{ status: string }>("query-status");
    switch (s.status) {
      case "running":
        return "Running";
      case "paused":
      case "suspended":
        return "Paused";
      case "inmigrate":
      case "prelaunch":
        return "Starting";
      case "postmigrate":
      case "finish-migrate":
        return "Saving";
      case "shutdown":
        return "Stopping";
      default:
        return "Running";
    }
  }

  private requireRunning(vm: VmConfig, ...states: VmState[]): Running {
    const r = this.running.get(vm.id);
    if (!r) throw new VmhostError("invalid-state", `VM "${vm.name}" is not running`, 409);
    if (states.length && !states.includes(r.state)) {
      throw new VmhostError("invalid-state", `VM "${vm.name}" is ${r.state}; this needs it ${states.join(" or ")}`, 409);
    }
    return r;
  }

  // ---- start ---------------------------------------------------------------------

  async start(vm: VmConfig): Promise<VmState> {
    if (this.running.has(vm.id)) {
      throw new VmhostError("invalid-state", `VM "${vm.name}" is already ${this.running.get(vm.id)!.state}`, 409);
    }
    const files = this.files(vm.name);
    const restoring = await pathExists(files.savedState);
    const runDir = this.runDirFor(vm);
    await rm(runDir, { recursive: true, force: true });
    await mkdir(runDir, { recursive: true, mode: 0o700 });
    const paths = this.runtimePaths(vm, runDir);
    if (paths.biosSerialConsole) await writeFile(paths.biosSerialConsole, Buffer.from([0xf8, 0x03]));
    const { accel, reason } = await this.env.accelerator();
    const extras = (await this.env.engineExtras?.(vm)) ?? {};
    const opts: EngineOptions = {
      accel,
      uefiCode: vm.generation === 2 ? this.env.uefiCode(vm.firmware.secureBoot) : undefined,
      secureBoot: vm.generation === 2 && vm.firmware.secureBoot,
      ...extras,
      incoming: restoring ? "defer" : undefined,
    };
    const argv = buildArgv(vm, paths, opts);

    // The console log is appended to across runs: this run's output starts at its current end.
    const consoleFrom = await stat(files.consoleLog).then((st) => st.size, () => 0);
    const logFd = openSync(files.qemuLog, "w");
    let child: ChildProcess;
    try {
      child = spawn(this.env.qemuBinary, argv, { detached: true, stdio: ["ignore", logFd, logFd] });
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

    const qmp = await this.connectQmp(paths.qmpSocket, () => childExit !== undefined).catch(async (err: Error) => {
      await sleep(50);
      const tail = (await consoleTail(files.qemuLog, 5)).join("\n");
      if (childExit === undefined && child.pid) process.kill(child.pid, "SIGKILL");
      throw new VmhostError("start-failed", `QEMU did not start: ${tail || err.message}`, 500);
    });
    const pid = child.pid!;
    const record: RuntimeRecord = {
      pid,
      startTime: (await processStartTime(pid)) ?? 0,
      startedAt: new Date().toISOString(),
      runDir,
      accel,
      accelReason: reason,
    };
    await writeRuntime(files, record);
    const r = this.track(vm, files, record, qmp, child, childExited, () => childExit, consoleFrom);
    r.state = restoring ? "Starting" : "Running";
    await this.event(vm.name, "started", `started under ${accel.toUpperCase()} (${reason})`);

    if (restoring) {
      try {
        await this.restoreState(r, files);
      } catch (err) {
        await this.killHard(r);
        throw new VmhostError("restore-failed", `restoring the saved state failed: ${(err as Error).message}; the saved state was kept`, 500);
      }
    }
    return r.state;
  }

  private async connectQmp(path: string, exited: () => boolean): Promise<QmpClient> {
    const deadline = Date.now() + QMP_CONNECT_TIMEOUT_MS;
    let last: Error = new Error("timed out");
    while (Date.now() < deadline) {
      if (exited()) throw new Error("QEMU exited during start");
      try {
        return await QmpClient.connect(path, 5000);
      } catch (err) {
        last = err as Error;
        await sleep(10);
      }
    }
    throw last;
  }

  private track(
    vm: VmConfig,
    files: VmFiles,
    record: RuntimeRecord,
    qmp: QmpClient,
    child?: ChildProcess,
    childExited?: Promise<void>,
    exitInfo: () => ChildExit | undefined = () => undefined,
    consoleFrom?: number,
  ): Running {
    let markGone!: (r: ExitRecord) => void;
    const gone = new Promise<ExitRecord>((resolve) => (markGone = resolve));
    const r: Running = {
      id: vm.id,
      name: vm.name,
      files,
      record,
      qmp,
      state: "Running",
      child,
      childExit: exitInfo,
      childExited,
      intent: undefined,
      console: new ConsoleWatcher(files.consoleLog, (line) => this.emit("console-line", vm.name, line)),
      gone,
      markGone,
    };
    this.running.set(vm.id, r);
    // Integration services attach their guest agent session here ("detached" when QEMU goes).
    this.emit("attached", vm, record.runDir);
    void r.console.start(consoleFrom ?? true);
    qmp.on("event", (ev: QmpEvent) => this.onQmpEvent(r, ev));
    qmp.once("close", () => void this.onQemuGone(r));
    return r;
  }

  private onQmpEvent(r: Running, ev: QmpEvent): void {
    switch (ev.event) {
      case "STOP":
        if (r.intent !== "save" && r.state !== "Stopping") this.setState(r, "Paused");
        break;
      case "RESUME":
        this.setState(r, "Running");
        break;
      case "SHUTDOWN": {
        const reason = String(ev.data?.["reason"] ?? "");
        r.shutdownReason = reason;
        this.setState(r, "Stopping");
        break;
      }
      case "RESET":
        if (ev.data?.["guest"] === true) void this.event(r.name, "reset", "the guest reset itself");
        break;
      case "POWERDOWN":
        void this.event(r.name, "acpi-power-button", "ACPI power button pressed");
        break;
    }
    this.emit("qmp-event", r.name, ev);
  }

  private setState(r: Running, state: VmState): void {
    if (r.state === state) return;
    r.state = state;
    this.emit("state", r.name, state);
  }

  /** QMP closed: QEMU is gone (or going). Work out why, record it, and show Off or Saved. */
  private async onQemuGone(r: Running): Promise<void> {
    if (r.childExited) await Promise.race([r.childExited, sleep(1000)]);
    else await waitForExit(r.record.pid, r.record.startTime, 1000);
    const reason = this.exitReason(r);
    r.console.stop();
    this.running.delete(r.id);
    this.emit("detached", r.name, r.id);
    const saved = r.intent === "save" && (await pathExists(r.files.savedState));
    const exit = await this.recordExit(r.name, r.files, saved ? "state saved" : reason, !saved && r.intent === undefined);
    await clearRuntime(r.files).catch(() => undefined);
    await rm(r.record.runDir, { recursive: true, force: true }).catch(() => undefined);
    this.emit("state", r.name, saved ? "Saved" : "Off");
    r.markGone(exit);
  }

  private exitReason(r: Running): string {
    const sr = r.shutdownReason;
    const ce = r.childExit();
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

  private async recordExit(name: string, files: VmFiles, reason: string, unexpected: boolean): Promise<ExitRecord> {
    const qemuLines = unexpected ? await consoleTail(files.qemuLog, 3) : [];
    const exit: ExitRecord = {
      at: new Date().toISOString(),
      reason: qemuLines.length && /exited with status/.test(reason) ? `${reason}: ${qemuLines.join(" | ")}` : reason,
      consoleTail: await consoleTail(files.consoleLog, 10),
    };
    await writeStatus(files, { lastExit: exit }).catch(() => undefined);
    await this.event(name, unexpected ? "exited" : "off", `Off: ${exit.reason}`);
    return exit;
  }

  async event(vm: string, type: string, message: string, data?: Record<string, unknown>): Promise<void> {
    const ev: VmEvent = { at: new Date().toISOString(), vm, type, message, ...(data ? { data } : {}) };
    this.emit("vm-event", ev);
    await this.journal.append(ev);
  }

  // ---- operations on a running VM ----------------------------------------------------

  async pause(vm: VmConfig): Promise<VmState> {
    const r = this.requireRunning(vm, "Running", "Paused");
    if (r.state === "Running") await r.qmp.execute("stop");
    this.setState(r, "Paused");
    return r.state;
  }

  async resume(vm: VmConfig): Promise<VmState> {
    const r = this.requireRunning(vm, "Paused", "Running");
    if (r.state === "Paused") await r.qmp.execute("cont");
    this.setState(r, "Running");
    return r.state;
  }

  /** Hard reset, as Hyper-V's Reset/Restart-VM -Force. */
  async restart(vm: VmConfig): Promise<VmState> {
    const r = this.requireRunning(vm, "Running", "Paused");
    await r.qmp.execute("system_reset");
    if (r.state === "Paused") await r.qmp.execute("cont");
    this.setState(r, "Running");
    await this.event(vm.name, "restart", "reset by the host");
    return r.state;
  }

  /** Guest shutdown through the ACPI power button; with force, turned off after the timeout. */
  async stop(vm: VmConfig, opts: { force: boolean; timeoutMs: number }): Promise<{ state: VmState; forced: boolean }> {
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
    const viaAgent = (await this.guestShutdown?.(vm).catch(() => false)) ?? false;
    this.setState(r, "Stopping");
    await this.event(vm.name, "stop", `shutdown requested through ${viaAgent ? "the guest agent (Shutdown integration service)" : "the ACPI power button"}`, {
      method: viaAgent ? "agent" : "acpi",
    });
    if (!viaAgent) await r.qmp.execute("system_powerdown").catch(() => undefined);
    const done = await Promise.race([r.gone.then(() => true), sleep(opts.timeoutMs).then(() => false)]);
    if (done) return { state: "Off", forced: false };
    if (!opts.force) {
      r.intent = undefined;
      if (this.running.has(vm.id)) this.setState(r, await this.queryState(r).catch(() => "Running" as VmState));
      throw new VmhostError(
        "shutdown-timeout",
        `the guest did not shut down within ${Math.round(opts.timeoutMs / 1000)} s (${viaAgent ? "its guest agent took the request" : "does it handle the ACPI power button?"}); use --force to turn it off`,
        409,
      );
    }
    await this.turnOffRunning(r);
    return { state: "Off", forced: true };
  }

  async turnOff(vm: VmConfig): Promise<VmState> {
    const r = this.running.get(vm.id);
    if (!r) {
      const files = this.files(vm.name);
      if (await pathExists(files.savedState)) {
        await rm(files.savedState, { force: true });
        await this.event(vm.name, "saved-state-discarded", "saved state discarded by turn-off");
      }
      return "Off";
    }
    await this.turnOffRunning(r);
    return "Off";
  }

  private async turnOffRunning(r: Running): Promise<void> {
    r.intent = "turn-off";
    await r.qmp.execute("quit", undefined, 3000).catch(() => undefined);
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

  /**
   * Save: pause, stream the machine state (RAM, devices, and the UEFI flash) to a file
   * through QEMU's migration, then stop QEMU. The next start restores it.
   */
  async save(vm: VmConfig): Promise<VmState> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const files = r.files;
    const tmp = `${files.savedState}.partial`;
    const sock = join(r.record.runDir, "save.sock");
    r.intent = "save";
    this.setState(r, "Saving");
    await r.qmp.execute("stop");
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
      await r.qmp.execute("migrate-set-parameters", { "max-bandwidth": 10 * 1024 * 1024 * 1024 });
      await r.qmp.execute("migrate", { uri: `unix:${sock}` });
      const status = await this.waitMigration(r.qmp, 600_000);
      if (status !== "completed") throw new Error(`migration ${status}`);
      await received;
      const fh = await open(tmp, "r+");
      await fh.sync();
      await fh.close();
      await rename(tmp, files.savedState);
    } catch (err) {
      server.close();
      await rm(tmp, { force: true });
      r.intent = undefined;
      await r.qmp.execute("cont").catch(() => undefined);
      this.setState(r, "Running");
      throw new VmhostError("save-failed", `saving the state failed: ${(err as Error).message}; the VM keeps running`, 500);
    }
    server.close();
    await this.event(vm.name, "saved", "state saved");
    await r.qmp.execute("quit", undefined, 3000).catch(() => undefined);
    await Promise.race([r.gone, sleep(10_000)]);
    if (this.running.has(vm.id)) await this.killHard(r);
    return "Saved";
  }

  private async waitMigration(qmp: QmpClient, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const m = await qmp.execute<{ status?: string }>("query-migrate");
      const s = m.status ?? "none";
      if (["completed", "failed", "cancelled"].includes(s)) return s;
      await sleep(20);
    }
    return "timed out";
  }

  private async restoreState(r: Running, files: VmFiles): Promise<void> {
    const sock = join(r.record.runDir, "restore.sock");
    await r.qmp.execute("migrate-incoming", { uri: `unix:${sock}` });
    await new Promise<void>((resolve, reject) => {
      const conn = createConnection(sock);
      conn.once("error", reject);
      conn.once("connect", () => {
        const input = createReadStream(files.savedState);
        input.once("error", reject);
        input.pipe(conn);
        conn.once("close", () => resolve());
      });
    });
    const deadline = Date.now() + 600_000;
    for (;;) {
      const s = await r.qmp.execute<{ status: string }>("query-status");
      if (s.status !== "inmigrate") break;
      if (Date.now() > deadline) throw new Error("the state did not load in time");
      await sleep(20);
    }
    const s = await r.qmp.execute<{ status: string }>("query-status");
    if (s.status === "paused" || s.status === "postmigrate" || s.status === "prelaunch") await r.qmp.execute("cont");
    await rm(files.savedState, { force: true });
    this.setState(r, "Running");
    await this.event(r.name, "restored", "saved state restored");
  }

  // ---- devices on a running VM ----------------------------------------------------------

  async hotAddDisk(vm: VmConfig, disk: HardDisk): Promise<void> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const node = QEMU_IDS.diskNode(disk.controllerType, disk.controllerNumber, disk.controllerLocation);
    await r.qmp.execute("blockdev-add", JSON.parse(diskBlockdev(disk)) as Record<string, unknown>);
    try {
      await r.qmp.execute("device_add", storageDevice(disk, "hd", true));
    } catch (err) {
      await r.qmp.execute("blockdev-del", { "node-name": node }).catch(() => undefined);
      throw new VmhostError("hotplug-failed", `adding the disk failed: ${(err as Error).message}`, 500);
    }
  }

  async hotRemoveDisk(vm: VmConfig, disk: HardDisk): Promise<void> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const id = QEMU_IDS.disk(disk.controllerType, disk.controllerNumber, disk.controllerLocation);
    const deleted = new Promise<void>((resolve) => {
      const onEv = (ev: QmpEvent) => {
        if (ev.event === "DEVICE_DELETED" && ev.data?.["device"] === id) {
          r.qmp.off("event", onEv);
          resolve();
        }
      };
      r.qmp.on("event", onEv);
    });
    await r.qmp.execute("device_del", { id });
    await Promise.race([deleted, sleep(10_000)]);
    await r.qmp.execute("blockdev-del", { "node-name": QEMU_IDS.diskNode(disk.controllerType, disk.controllerNumber, disk.controllerLocation) });
  }

  /** Media change in a DVD or floppy drive of a running VM. */
  async changeMedium(
    vm: VmConfig,
    drive: { kind: "floppy" } | { kind: "dvd"; controllerType: "IDE" | "SCSI"; controllerNumber: number; controllerLocation: number },
    path: string | null,
  ): Promise<void> {
    const r = this.requireRunning(vm, "Running", "Paused");
    const id = drive.kind === "floppy" ? "fd0" : QEMU_IDS.disk(drive.controllerType, drive.controllerNumber, drive.controllerLocation);
    if (path === null) await r.qmp.execute("eject", { id, force: true });
    else
      await r.qmp.execute("blockdev-change-medium", {
        id,
        filename: path,
        format: "raw",
        "read-only-mode": drive.kind === "dvd" ? "read-only" : "retain",
      });
  }


  /** Only for tests and benchmarks: the QMP connection of a running VM. */
  qmpOf(vm: VmConfig): QmpClient | undefined {
    return this.running.get(vm.id)?.qmp;
  }

  /** Seconds since the console last printed anything (for stall detection), or undefined when off. */
  consoleQuietSeconds(vm: VmConfig): number | undefined {
    const r = this.running.get(vm.id);
    return r ? (Date.now() - r.console.lastOutputAt) / 1000 : undefined;
  }

  /** What the console printed after its last newline (a prompt), or undefined when off. */
  consolePending(vm: VmConfig): string | undefined {
    return this.running.get(vm.id)?.console.pendingText();
  }

  runningPids(): number[] {
    return [...this.running.values()].map((r) => r.record.pid);
  }
}

