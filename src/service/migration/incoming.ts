import { createWriteStream } from "node:fs";
import { appendFile, mkdir, readFile, rename, rm, stat } from "node:fs/promises";
import { createServer } from "node:net";
import { basename, dirname, join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import { createOverlay, repoint } from "../../checkpoints/images.js";
import { CheckpointTree, serializeTree } from "../../checkpoints/tree.js";
import { tlsCredsObject } from "../../engine/qemu/argv.js";
import { writeTlsCredsDir } from "../../engine/qemu/tls.js";
import type { HostLayout } from "../../home/layout.js";
import type { VmHome } from "../../home/vm-home.js";
import { createDisk } from "../../images/disk.js";
import { nameKey, parseConfig, serializeConfig, slotRef, type ConfigStore, type HostCapacity, type VmConfig } from "../../model/index.js";
import type { NetworkManager } from "../../network/manager.js";
import type { Supervisor } from "../../supervisor/supervisor.js";
import { VmhostError, notFound } from "../../util/errors.js";
import { pathExists } from "../../util/fs.js";
import type { VmChanges } from "../changes.js";
import type { CompareReply, Incompatibility, IncomingStatus, PrepareRequest, StartReply } from "../../api/migration.js";

/** The record of a migration into this host, in the VM's folder until it finishes or is thrown away. */
const IncomingRecord = z
  .object({
    migrationId: z.string(),
    sourceHost: z.string(),
    startedAt: z.string(),
    /** Files this host made for it (moved disks, checkpoint images): deleted on abort. */
    created: z.array(z.string()),
  })
  .strict();
type IncomingRecord = z.infer<typeof IncomingRecord>;

interface Pending {
  req: PrepareRequest;
  dir: string;
  vmId: string;
}

/** A free TCP port on `address` (bound and released; the race with another binder is QEMU's error to report). */
async function freePort(address: string): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, address, () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolvePort(port));
    });
  });
}

function slotKey(slot: string): string {
  return slot.toLowerCase().replace(/[^a-z0-9]+/g, "");
}

/**
 * Move-VM's destination side: validates what comes (Compare-VM), makes the VM (its files, disks
 * for moved storage, the checkpoints it brings), starts its QEMU waiting for the stream with the
 * guest paused, serves its disks over NBD for the source's mirrors, and runs the guest only when
 * the source says the stream is complete. Until then, an abort or this service's own restart
 * removes everything it made.
 */
export class IncomingMigrations {
  private readonly pending = new Map<string, Pending>();
  private readonly layout: HostLayout;
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly changes: VmChanges;
  private readonly network: NetworkManager;
  private readonly host: () => HostCapacity;

  constructor(deps: { layout: HostLayout; store: ConfigStore; supervisor: Supervisor; changes: VmChanges; network: NetworkManager; hostCapacity: () => HostCapacity }) {
    this.layout = deps.layout;
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.changes = deps.changes;
    this.network = deps.network;
    this.host = deps.hostCapacity;
  }

  /** Compare-VM for a move: everything that would not fit here, each with its fix; nothing changes. */
  async compare(req: PrepareRequest): Promise<CompareReply> {
    const out: Incompatibility[] = [];
    const vm = req.config;
    const others = await this.store.configs();
    if (others.some((o) => o.id === vm.id)) out.push({ what: `a VM with the id ${vm.id} exists on this host already`, fix: "remove it here, or export the VM and import it with --generate-new-id" });
    const clash = others.find((o) => nameKey(o.name) === nameKey(vm.name) && o.id !== vm.id);
    if (clash) out.push({ what: `a VM named "${clash.name}" exists on this host`, fix: `rename one of them first (vmhost rename)` });
    const cap = this.host();
    if (vm.memoryMiB > cap.memoryMiB) out.push({ what: `VM memory ${vm.memoryMiB} MiB is more than this host's ${cap.memoryMiB} MiB`, fix: "lower the VM's memory or move it to a bigger host" });
    if (vm.processorCount > cap.logicalProcessors) out.push({ what: `${vm.processorCount} virtual processors is more than this host's ${cap.logicalProcessors}`, fix: "lower the VM's processor count first" });
    for (const n of vm.networkAdapters) {
      try {
        await this.network.resolveName(n.switchName);
      } catch {
        out.push({ what: `switch "${n.switchName}" (adapter "${n.name}") does not exist on this host`, fix: `create it here (vmhost switch new "${n.switchName}" ...) or connect the adapter to another switch first` });
      }
    }
    for (const o of others) {
      for (const n of o.networkAdapters) {
        const m = vm.networkAdapters.find((x) => x.macAddress === n.macAddress && x.switchName.toLowerCase() === n.switchName.toLowerCase());
        if (m) out.push({ what: `MAC address ${n.macAddress} is used by VM "${o.name}" on switch "${n.switchName}" here`, fix: "give one of the adapters another MAC address" });
      }
    }
    if (req.includeStorage) {
      const dest = resolve(req.destinationStoragePath ?? this.layout.disksDir);
      if (!dest.startsWith(resolve(this.layout.home) + "/")) out.push({ what: `destination storage path ${dest} is outside this host's vmhost home`, fix: `give a folder under ${this.layout.home}` });
    } else {
      for (const d of req.disks) {
        const st = await stat(d.path).catch(() => undefined);
        if (!st) out.push({ what: `disk ${d.path} (${d.slot}) is not visible on this host`, fix: "use storage both hosts see, or move with --include-storage" });
      }
    }
    for (const f of ["OVMF_CODE_4M.fd", "OVMF_CODE_4M.ms.fd"]) {
      if (vm.generation === 2 && !(await pathExists(join("/usr/share/OVMF", f)))) out.push({ what: `the firmware file /usr/share/OVMF/${f} is missing here`, fix: "install the ovmf package" });
    }
    return { fits: out.length === 0, incompatibilities: out };
  }

  /** Reserves the move: validated, a folder for the files that come before the start. */
  async prepare(req: PrepareRequest): Promise<void> {
    const cmp = await this.compare(req);
    if (!cmp.fits) throw new VmhostError("migration-refused", `VM "${req.config.name}" does not fit this host: ${cmp.incompatibilities.map((i) => `${i.what} (${i.fix})`).join("; ")}`, 409);
    const dir = join(this.layout.incomingDir, `.incoming-${req.migrationId}`);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true, mode: 0o700 });
    this.pending.set(req.migrationId, { req, dir, vmId: req.config.id });
  }

  private get(migrationId: string): Pending {
    const p = this.pending.get(migrationId);
    if (!p) throw notFound(`migration ${migrationId}`);
    return p;
  }

  /** A file of the VM's checkpoints, before the start (names are checked: no path leaves the folder). */
  async upload(migrationId: string, rel: string, data: NodeJS.ReadableStream): Promise<void> {
    const p = this.get(migrationId);
    const known = p.req.checkpoints?.files.find((f) => f.rel === rel);
    if (!known) throw new VmhostError("bad-request", `file ${rel} is not one the move announced`);
    const target = join(p.dir, rel);
    await mkdir(dirname(target), { recursive: true, mode: 0o700 });
    await pipeline(data, createWriteStream(target, { mode: 0o600 }));
    const st = await stat(target);
    if (st.size !== known.size) throw new VmhostError("migration-failed", `file ${rel} arrived with ${st.size} bytes, not ${known.size}`);
  }

  /**
   * Makes the VM (one change transaction: configuration, NVRAM from the template (the stream
   * brings the real one), moved disks, the checkpoints it brings) and starts its QEMU waiting for
   * the stream, guest paused; with storage, its disks are served over NBD.
   */
  async start(migrationId: string): Promise<StartReply> {
    const p = this.get(migrationId);
    const req = p.req;
    const created: string[] = [];
    const destDir = resolve(req.destinationStoragePath ?? this.layout.disksDir);
    const mirrors: { slot: string; exportName: string; sync: "full" | "top" }[] = [];
    const home0 = this.store.home(req.config.id);
    // Where each image of the source lands here (moved storage); shared storage keeps its paths.
    const mapPath = (src: string): string => (req.includeStorage ? (src.includes(".checkpoints/") ? join(home0.checkpointDisksDir, basename(src)) : join(destDir, basename(src))) : src);
    const draft: VmConfig = structuredClone(req.config);
    try {
      await this.changes.create(draft, async (ctx) => {
        const vm = ctx.vm;
        const tree = req.checkpoints ? CheckpointTree.parse(structuredClone(req.checkpoints.tree)) : undefined;
        if (req.includeStorage) {
          await mkdir(destDir, { recursive: true, mode: 0o700 });
          await mkdir(ctx.home.checkpointDisksDir, { recursive: true, mode: 0o700 });
          // The checkpoints' frozen images arrive as files; Now's overlays are mirrored (sync top).
          for (const f of req.checkpoints?.files ?? []) {
            if (!f.rel.startsWith("images/")) continue;
            const target = mapPath(req.checkpoints!.tree.checkpoints.flatMap((c) => c.disks).find((d) => basename(d.path) === basename(f.rel))?.path ?? f.rel);
            await refuseExisting(target);
            await ctx.txn.created(target);
            await rename(join(p.dir, f.rel), target);
            created.push(target);
          }
        }
        for (const d of vm.hardDisks) {
          const slot = slotRef(d);
          const src = req.disks.find((x) => x.slot === slot);
          if (!src) continue;
          if (!req.includeStorage) continue;
          const target = mapPath(d.path);
          await refuseExisting(target);
          await ctx.txn.created(target);
          const nowDisk = tree?.now.disks.find((x) => x.slot === slot);
          if (nowDisk?.backing) {
            await createOverlay(target, { path: mapPath(nowDisk.backing.path), format: nowDisk.backing.format }, src.virtualSize);
            mirrors.push({ slot, exportName: `vmhost-${slotKey(slot)}`, sync: "top" });
          } else {
            await createDisk(target, src.virtualSize, d.format);
            mirrors.push({ slot, exportName: `vmhost-${slotKey(slot)}`, sync: "full" });
          }
          created.push(target);
          d.path = target;
        }
        if (tree) {
          // The tree and each checkpoint's own files, their image paths as this host has them.
          for (const c of tree.checkpoints) for (const d of c.disks) {
            d.path = mapPath(d.path);
            if (d.backing) d.backing.path = mapPath(d.backing.path);
          }
          for (const d of tree.now.disks) {
            d.path = mapPath(d.path);
            if (d.backing) d.backing.path = mapPath(d.backing.path);
          }
          if (req.includeStorage) {
            for (const c of tree.checkpoints) {
              for (const d of c.disks) {
                const sent = req.checkpoints!.files.find((f) => f.rel === `images/${basename(d.path)}`);
                // An image whose backing file is not the VM's (a shared base) came flattened: it reads nothing.
                if (sent?.flattened) d.backing = null;
                else if (d.backing && d.format === "qcow2" && created.includes(d.path)) await repoint(d.path, d.backing);
              }
            }
          }
          await ctx.txn.write(ctx.home.checkpointTree, serializeTree(tree));
          for (const c of tree.checkpoints) {
            const cpDir = ctx.home.checkpointDir(c.id);
            await ctx.txn.created(cpDir);
            await mkdir(cpDir, { recursive: true, mode: 0o700 });
            for (const name of ["vm.json", "nvram.fd", "firmware-pending.json", "memory.bin"]) {
              const from = join(p.dir, "checkpoints", c.id, name);
              if (!(await pathExists(from))) continue;
              if (name === "vm.json") {
                const cfg = parseConfig(from, await readFile(from, "utf8"));
                for (const d of cfg.hardDisks) d.path = mapPath(d.path);
                await ctx.txn.write(join(cpDir, name), serializeConfig(cfg));
              } else await rename(from, join(cpDir, name));
            }
          }
        }
        const record: IncomingRecord = { migrationId, sourceHost: req.sourceHost, startedAt: new Date().toISOString(), created };
        await ctx.txn.write(ctx.home.incomingMigration, JSON.stringify(record, null, 2) + "\n");
        ctx.event("migration-incoming", `live migration from ${req.sourceHost} prepared${req.includeStorage ? " (storage moves too)" : ""}`);
      });
      const vm = await this.store.get(req.config.id);
      const home = this.store.home(vm.id);
      const objects: string[] = [];
      let tlsId: string | undefined;
      if (req.tls) {
        tlsId = "vmhost-mig-tls";
        await writeTlsCredsDir(home.migrationTlsDir, { caCert: req.tls.caCert, serverCert: req.tls.serverCert, serverKey: req.tls.serverKey });
        objects.push(tlsCredsObject(tlsId, home.migrationTlsDir, "server"));
      }
      const port = await freePort(req.listenAddress);
      const extras = await this.network.engineExtras(vm);
      await this.supervisor.start(vm, { incoming: { uri: `tcp:${req.listenAddress}:${port}`, ...(tlsId ? { tlsCredsId: tlsId } : {}) }, extras: { ...extras, objects } });
      let nbd: StartReply["nbd"];
      if (mirrors.length) {
        const nbdPort = String(await freePort(req.listenAddress));
        await this.supervisor.exportDisks(vm, mirrors.map((m) => ({ slot: m.slot, exportName: m.exportName })), { host: req.listenAddress, port: nbdPort }, tlsId);
        nbd = { host: req.listenAddress, port: nbdPort, exports: mirrors };
      }
      await rm(p.dir, { recursive: true, force: true });
      if (process.env["VMHOST_TEST_KILL_AT"] === "incoming-stream") void this.dieMidStream(vm);
      return { migrationUri: `tcp:${req.listenAddress}:${port}`, ...(nbd ? { nbd } : {}) };
    } catch (err) {
      await this.abort(migrationId).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Test only (VMHOST_TEST_KILL_AT=incoming-stream): this whole host dies half way through an
   * incoming migration: once the stream is flowing, its QEMU and then vmhostd are SIGKILLed, as a
   * power cut would. Deterministic: it acts on QEMU's own "active" state, not on a delay.
   */
  private async dieMidStream(vm: VmConfig): Promise<void> {
    for (;;) {
      const mon = this.supervisor.monitorOf(vm);
      if (!mon) return;
      const s = await mon.queryMigrate().catch(() => ({ status: undefined }));
      if (s.status === "active" || s.status === "completed") {
        const pid = (await this.supervisor.view(vm)).pid;
        if (pid) process.kill(pid, "SIGKILL");
        process.kill(process.pid, "SIGKILL");
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  private async recordOf(home: VmHome): Promise<IncomingRecord | undefined> {
    try {
      return IncomingRecord.parse(JSON.parse(await readFile(home.incomingMigration, "utf8")));
    } catch {
      return undefined;
    }
  }

  private async vmOf(migrationId: string): Promise<VmConfig | undefined> {
    const p = this.pending.get(migrationId);
    if (p) return this.store.get(p.vmId).catch(() => undefined);
    for (const id of await this.store.ids()) {
      const r = await this.recordOf(this.store.home(id));
      if (r?.migrationId === migrationId) return this.store.get(id).catch(() => undefined);
    }
    return undefined;
  }

  /** The source's stream is complete: the guest runs here; the record and the TLS material go. */
  async finish(migrationId: string): Promise<IncomingStatus> {
    const vm = await this.vmOf(migrationId);
    if (!vm) throw notFound(`migration ${migrationId}`);
    const home = this.store.home(vm.id);
    await this.supervisor.withLock(vm.id, async () => {
      await this.supervisor.finishIncoming(vm);
      await this.changes.changeLocked(vm.id, async (ctx) => {
        await ctx.txn.remove(home.incomingMigration);
        ctx.event("migration-finished", `moved here from ${this.pending.get(migrationId)?.req.sourceHost ?? "another host"}; the guest runs on this host`);
      });
      await rm(home.migrationTlsDir, { recursive: true, force: true });
    });
    this.pending.delete(migrationId);
    return { migrationId, vm: vm.name, phase: "running" };
  }

  /** Throws the move away here: QEMU stopped, the VM and everything made for it removed. */
  async abort(migrationId: string): Promise<void> {
    const p = this.pending.get(migrationId);
    const vm = await this.vmOf(migrationId);
    if (vm) await this.removeIncoming(vm, `the move from ${p?.req.sourceHost ?? "another host"} was aborted`);
    if (p) await rm(p.dir, { recursive: true, force: true });
    this.pending.delete(migrationId);
  }

  private async removeIncoming(vm: VmConfig, why: string): Promise<void> {
    const home = this.store.home(vm.id);
    const rec = await this.recordOf(home);
    if (!rec) throw new VmhostError("invalid-state", `VM "${vm.name}" is not being migrated in; it is not removed`, 409);
    await this.supervisor.withLock(vm.id, async () => {
      if (this.supervisor.isRunning(vm.id)) await this.supervisor.turnOff(vm);
      await this.network.releaseTaps(vm).catch(() => undefined);
      for (const f of rec.created) await rm(f, { recursive: true, force: true });
      await rm(home.checkpointDisksDir, { recursive: true, force: true });
      await rm(home.dir, { recursive: true, force: true });
      this.store.invalidate(vm.id);
    });
    await appendHostEvent(this.layout.hostEvents, { type: "migration-aborted", vm: vm.name, vmId: vm.id, message: why });
  }

  async status(migrationId: string): Promise<IncomingStatus> {
    const vm = await this.vmOf(migrationId);
    if (!vm) return { migrationId, vm: "", phase: "gone" };
    const rec = await this.recordOf(this.store.home(vm.id));
    if (!rec) return { migrationId, vm: vm.name, phase: "running" };
    const state = this.supervisor.stateOf(vm);
    if (!state) return { migrationId, vm: vm.name, phase: "prepared" };
    const mon = this.supervisor.monitorOf(vm);
    const s = mon ? (await mon.queryStatus()).status : undefined;
    return { migrationId, vm: vm.name, phase: s === "inmigrate" ? "waiting" : s === "running" ? "running" : "received" };
  }

  /**
   * At service start: a migration into this host that did not finish is thrown away (its QEMU
   * never ran the guest); one whose guest already runs (finish was cut short after `cont`) is
   * kept, its record removed.
   */
  async recoverAll(): Promise<void> {
    for (const id of await this.store.ids()) {
      const home = this.store.home(id);
      const rec = await this.recordOf(home);
      if (!rec) continue;
      const vm = await this.store.get(id).catch(() => undefined);
      if (!vm) continue;
      const mon = this.supervisor.monitorOf(vm);
      const s = mon ? (await mon.queryStatus().catch(() => undefined))?.status : undefined;
      if (s === "running") {
        await rm(home.incomingMigration, { force: true });
        await rm(home.migrationTlsDir, { recursive: true, force: true });
        await this.supervisor.event(vm, "migration-finished", "a live migration into this host had finished; its record was left by a restart");
      } else await this.removeIncoming(vm, "a live migration into this host was interrupted by a service restart");
    }
    await rm(this.layout.incomingDir, { recursive: true, force: true });
  }

  /** Names of VMs being migrated in (refused for other operations meanwhile). */
  async isIncoming(vmId: string): Promise<boolean> {
    return pathExists(this.store.home(vmId).incomingMigration);
  }
}

/** A moved image never replaces a file of this host. */
async function refuseExisting(path: string): Promise<void> {
  if (await pathExists(path)) throw new VmhostError("migration-refused", `${path} exists on this host already; a moved disk never replaces a file`, 409);
}

/** Appends an event of the host (not of one VM) to host/events.jsonl. */
export async function appendHostEvent(file: string, ev: { type: string; vm?: string; vmId?: string; message: string; data?: Record<string, unknown> }): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await appendFile(file, JSON.stringify({ at: new Date().toISOString(), ...ev }) + "\n", { mode: 0o600 }).catch(() => undefined);
}
