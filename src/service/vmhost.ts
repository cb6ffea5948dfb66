import { mkdir } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { resolveAccelerator, type AccelDecision } from "../engine/qemu/accel.js";
import { hostFacts, hostPaths } from "../engine/qemu/host.js";
import { GuestSessions } from "../guest/registry.js";
import { ensurePrivateDir, hostLayout, type HostLayout } from "../home/layout.js";
import { migrateHome, type MigrationReport } from "../home/migrate.js";
import { ConfigStore, MacPool, type HostCapacity } from "../model/index.js";
import { NetworkManager } from "../network/manager.js";
import { BootDiagnostics } from "../supervisor/diagnostics/index.js";
import { EventJournal } from "../supervisor/events.js";
import { Supervisor } from "../supervisor/supervisor.js";
import { sweepTempFiles } from "../util/atomic.js";
import { VmChanges } from "./changes.js";
import { CheckpointManager } from "./checkpoints.js";
import { GenerationConverter } from "./convert.js";
import { IncomingMigrations } from "./migration/incoming.js";
import { MoveManager, hostName } from "./migration/move.js";
import { HostPeers } from "./migration/peers.js";
import { DeviceManager } from "./devices.js";
import { DiskPolicy } from "./disks.js";
import { FirmwareManager } from "./firmware.js";
import { IntegrationManager } from "./integration.js";
import { NvramStep } from "./nvram.js";
import { ExportManager } from "./travel/export.js";
import { ImportManager } from "./travel/import.js";
import { StorageDirs, VhdManager } from "./vhd.js";
import { VmManager } from "./vms.js";

/**
 * vmhostd's composition root: every part of the management service, built once, in dependency
 * order, each handed what it needs at construction (nothing is wired in afterwards). The API
 * (api.ts) and the CLI speak to these parts.
 *
 *   layout -> store -> sessions -> supervisor -> nvram step -> changes -> network
 *          -> devices -> integration -> firmware -> vms -> checkpoints
 *          -> storage dirs -> vhd tools, export, import, generation conversion, moves
 */
export class VmHost {
  readonly layout: HostLayout;
  readonly store: ConfigStore;
  readonly macs: MacPool;
  readonly sessions: GuestSessions;
  readonly supervisor: Supervisor;
  readonly diagnostics: BootDiagnostics;
  readonly nvram: NvramStep;
  readonly changes: VmChanges;
  readonly network: NetworkManager;
  readonly devices: DeviceManager;
  readonly disks: DiskPolicy;
  readonly integration: IntegrationManager;
  readonly firmware: FirmwareManager;
  readonly vms: VmManager;
  readonly checkpoints: CheckpointManager;
  /** Where vmhostd may write files users name (VHD tools, exports, import destinations). */
  readonly storage: StorageDirs;
  readonly vhd: VhdManager;
  readonly exports: ExportManager;
  readonly imports: ImportManager;
  readonly conversions: GenerationConverter;
  /** Move-VM: this host as a source (moves) and as a destination (incoming). */
  readonly moves: MoveManager;
  readonly incoming: IncomingMigrations;
  /** Other vmhost hosts this one reaches (host/peers/). */
  readonly peers: HostPeers;
  private accel?: Promise<AccelDecision>;
  /** What opening the home did to an older layout (empty when it was current). */
  migration?: MigrationReport;

  constructor(home?: string) {
    this.layout = hostLayout(home);
    this.store = new ConfigStore(this.layout.vmsDir, this.layout.runDir, this.layout.disksDir);
    this.macs = new MacPool(join(this.layout.hostDir, "mac-pool.json"));
    this.sessions = new GuestSessions();
    this.supervisor = new Supervisor({
      store: this.store,
      journal: new EventJournal(),
      guest: this.sessions,
      engine: {
        binaries: async () => {
          const p = await hostPaths();
          return { qemuBinary: p.qemuBinary, uefiCode: (secure) => (secure ? p.ovmf.secure4m.code : p.ovmf.plain4m.code) };
        },
        accelerator: () => this.accelerator(),
      },
    });
    this.diagnostics = new BootDiagnostics(this.supervisor, { guestAlive: (id) => this.sessions.isAlive(id) });
    this.nvram = new NvramStep({
      emptyVars: async () => (await hostPaths()).ovmf.plain4m.vars,
      keyVars: async () => (await hostPaths()).ovmf.secure4m.vars,
    });
    this.changes = new VmChanges({ store: this.store, supervisor: this.supervisor, hostCapacity: () => this.hostCapacity(), steps: [this.nvram] });
    this.network = new NetworkManager(this.layout.home, this.store, this.supervisor);
    this.disks = new DiskPolicy(this.store, this.layout.home);
    this.devices = new DeviceManager({ changes: this.changes, supervisor: this.supervisor, network: this.network, macs: this.macs, disksDir: this.layout.disksDir, disks: this.disks });
    this.integration = new IntegrationManager({ store: this.store, supervisor: this.supervisor, changes: this.changes, sessions: this.sessions });
    this.firmware = new FirmwareManager({ store: this.store, supervisor: this.supervisor, changes: this.changes, nvram: this.nvram });
    this.vms = new VmManager({
      layout: this.layout,
      store: this.store,
      supervisor: this.supervisor,
      changes: this.changes,
      devices: this.devices,
      integration: this.integration,
      network: this.network,
      disks: this.disks,
    });
    this.checkpoints = new CheckpointManager({ store: this.store, supervisor: this.supervisor, changes: this.changes, vms: this.vms, integration: this.integration });
    this.storage = new StorageDirs(this.layout.home);
    this.vhd = new VhdManager({ store: this.store, supervisor: this.supervisor, disks: this.disks, checkpoints: this.checkpoints, dirs: this.storage });
    this.exports = new ExportManager({
      store: this.store,
      supervisor: this.supervisor,
      changes: this.changes,
      checkpoints: this.checkpoints,
      disks: this.disks,
      dirs: this.storage,
      hostDir: this.layout.hostDir,
    });
    this.imports = new ImportManager({
      store: this.store,
      supervisor: this.supervisor,
      changes: this.changes,
      disks: this.disks,
      network: this.network,
      macs: this.macs,
      dirs: this.storage,
      disksDir: this.layout.disksDir,
      hostCapacity: () => this.hostCapacity(),
    });
    this.conversions = new GenerationConverter({
      store: this.store,
      supervisor: this.supervisor,
      changes: this.changes,
      vms: this.vms,
      disks: this.disks,
      macs: this.macs,
      sessions: this.sessions,
      diagnosis: (id) => this.diagnostics.current(id),
      disksDir: this.layout.disksDir,
    });
    this.incoming = new IncomingMigrations({ layout: this.layout, store: this.store, supervisor: this.supervisor, changes: this.changes, network: this.network, hostCapacity: () => this.hostCapacity() });
    this.peers = new HostPeers(join(this.layout.hostDir, "peers"), hostName);
    this.moves = new MoveManager({ layout: this.layout, store: this.store, supervisor: this.supervisor, checkpoints: this.checkpoints, network: this.network });
    // Every state change is journaled, so `events` tells the VM's whole story.
    this.supervisor.on("state", (vm, state) => void this.supervisor.event(vm, "state", `state: ${state}`, { state }));
  }

  /**
   * Opens the home: private folders, an older layout migrated, interrupted changes finished or
   * undone, temp files of dead writers swept, running QEMUs adopted, switches checked.
   * `runDirMode` 0o710 lets the socket's group reach vmhostd's socket (service/server/index.ts).
   */
  async init(opts: { runDirMode?: number } = {}): Promise<void> {
    await mkdir(this.layout.home, { recursive: true, mode: 0o700 });
    await ensurePrivateDir(this.layout.runDir, opts.runDirMode);
    for (const d of [this.layout.vmsDir, this.layout.hostDir, this.layout.disksDir]) await mkdir(d, { recursive: true, mode: 0o700 });
    this.migration = await migrateHome(this.layout);
    for (const d of [this.layout.vmsDir, this.layout.hostDir, this.layout.disksDir]) await sweepTempFiles(d);
    for (const id of await this.store.ids()) await sweepTempFiles(this.store.home(id).dir);
    // Adopt first: whether an interrupted change is finished or undone can depend on what a
    // running QEMU already uses (a live checkpoint's overlays).
    await this.supervisor.adoptAll();
    await this.changes.recoverAll(this.layout.vmsDir);
    await this.checkpoints.recoverAll();
    // Exports a killed vmhostd left: their temporary checkpoints merged away, their folders gone.
    await this.exports.recoverAll();
    await this.conversions.sweep();
    await this.storage.sweep();
    await this.incoming.recoverAll();
    await this.network.init();
  }

  close(): void {
    this.diagnostics.close();
    this.supervisor.close();
  }

  accelerator(refresh = false): Promise<AccelDecision> {
    if (!this.accel || refresh) {
      this.accel = resolveAccelerator(join(this.layout.hostDir, "accelerator.json"), { refresh });
      this.accel.catch(() => (this.accel = undefined));
    }
    return this.accel;
  }

  hostCapacity(): HostCapacity {
    return { logicalProcessors: cpus().length, memoryMiB: Math.floor(totalmem() / (1024 * 1024)) };
  }

  /** Get-VMHost: accelerator (and why), QEMU and firmware versions, capacity, paths, the service's own memory. */
  async host(): Promise<Record<string, unknown>> {
    const [facts, accel] = await Promise.all([hostFacts(), this.accelerator()]);
    const cap = this.hostCapacity();
    return {
      accelerator: accel.accel,
      acceleratorReason: accel.reason,
      acceleratorProbe: { tcgLoopMs: accel.tcgLoopMs, kvmLoopMs: accel.kvmLoopMs, probedAt: accel.probedAt },
      qemu: { binary: facts.qemuBinary, version: facts.qemuVersion, package: facts.qemuPackage },
      qemuImg: facts.qemuImg,
      ovmf: facts.ovmf,
      seabios: facts.seabios,
      ipxeRomDir: facts.ipxeRomDir,
      kvmDevice: facts.kvmDevice,
      logicalProcessors: cap.logicalProcessors,
      memoryMiB: cap.memoryMiB,
      paths: { home: this.layout.home, vms: this.layout.vmsDir, run: this.layout.runDir, disks: this.layout.disksDir },
      service: serviceMemory(),
    };
  }
}

/**
 * The service's own memory. With --expose-gc (how vmhostd is started) a full collection runs
 * first, so `liveKiB` (heap + off-heap buffers) is what is really held, not garbage not yet freed.
 */
function serviceMemory(): { pid: number; rssKiB: number; liveKiB: number; collected: boolean } {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const m = process.memoryUsage();
  return { pid: process.pid, rssKiB: Math.round(m.rss / 1024), liveKiB: Math.round((m.heapUsed + m.external) / 1024), collected: gc !== undefined };
}
