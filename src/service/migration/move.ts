import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { hostname as osHostname, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { virtualSize } from "../../checkpoints/images.js";
import { makeMigrationTls, writeTlsCredsDir } from "../../engine/qemu/tls.js";
import type { HostLayout } from "../../home/layout.js";
import { qemuDriverOf } from "../../images/format.js";
import { qemuImg } from "../../images/tools.js";
import { slotRef, type ConfigStore, type VmConfig } from "../../model/index.js";
import type { NetworkManager } from "../../network/manager.js";
import type { Supervisor } from "../../supervisor/supervisor.js";
import { VmhostError } from "../../util/errors.js";
import type { CheckpointManager } from "../checkpoints.js";
import { appendHostEvent } from "./incoming.js";
import type { CompareReply, MigrationPeer, PrepareRequest } from "../../api/migration.js";

export interface MoveOptions {
  /** Copy the disks (and checkpoint images) while the guest runs; else both hosts see the same storage. */
  includeStorage?: boolean;
  destinationStoragePath?: string;
  /** The destination address the streams use (a network the user names); defaults to the peer's API address. */
  listenAddress: string;
  /** QEMU's downtime limit in ms (default QEMU's 300). */
  downtimeLimitMs?: number;
  onProgress?: (phase: string, fraction: number) => void;
}

export interface MoveResult {
  vm: string;
  destination: string;
  downtimeMs?: number;
  totalMs?: number;
  mirroredBytes: number;
  messages: string[];
}

/**
 * Move-VM's source side: a running VM goes to another vmhost host with its guest running on.
 * The destination is prepared first (Compare-VM, then its QEMU waiting with the guest paused);
 * disks are mirrored over NBD when storage moves (checkpoint images sent as files first, Now's
 * overlays mirrored on top), memory and devices (UEFI flash included) follow in QEMU's migration
 * stream, all over TLS made for this move; the guest runs there only when the destination
 * confirms, and only then does this host let go of it. Any failure before that leaves the guest
 * running here, unharmed, and the destination clean.
 */
export class MoveManager {
  private readonly layout: HostLayout;
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly checkpoints: CheckpointManager;
  private readonly network: NetworkManager;

  constructor(deps: { layout: HostLayout; store: ConfigStore; supervisor: Supervisor; checkpoints: CheckpointManager; network: NetworkManager }) {
    this.layout = deps.layout;
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.checkpoints = deps.checkpoints;
    this.network = deps.network;
  }

  /** What the destination is told (without the TLS material, for a compare). */
  private async request(vm: VmConfig, migrationId: string, opts: MoveOptions, sourceHost: string): Promise<{ req: PrepareRequest; files: { rel: string; from: string; flatten: boolean }[] }> {
    const home = this.store.home(vm.id);
    const disks = [];
    for (const d of vm.hardDisks) disks.push({ slot: slotRef(d), path: d.path, format: d.format, virtualSize: await virtualSize(d.path, d.format) });
    const tree = await this.checkpoints.readTree(home);
    const files: { rel: string; from: string; flatten: boolean }[] = [];
    if (tree.checkpoints.length) {
      for (const c of tree.checkpoints) {
        const dir = home.checkpointDir(c.id);
        for (const name of await readdir(dir).catch(() => [] as string[])) files.push({ rel: `checkpoints/${c.id}/${name}`, from: join(dir, name), flatten: false });
      }
      if (opts.includeStorage) {
        const images = new Set(tree.checkpoints.flatMap((c) => c.disks.map((d) => d.path)));
        for (const c of tree.checkpoints) {
          for (const d of c.disks) {
            if (files.some((f) => f.from === d.path)) continue;
            // A base that is not one of the VM's own images (the appliance's, say) is folded in.
            files.push({ rel: `images/${basename(d.path)}`, from: d.path, flatten: d.backing !== null && !images.has(d.backing.path) });
          }
        }
      }
    }
    const req: PrepareRequest = {
      migrationId,
      sourceHost,
      config: vm,
      includeStorage: opts.includeStorage === true,
      ...(opts.destinationStoragePath ? { destinationStoragePath: opts.destinationStoragePath } : {}),
      disks,
      ...(tree.checkpoints.length ? { checkpoints: { tree, files: [] } } : {}),
      tls: null,
      listenAddress: opts.listenAddress,
    };
    return { req, files };
  }

  /** Compare-VM for a move: what would not fit on the destination, before anything is changed. */
  async compare(ref: string, peer: MigrationPeer, opts: MoveOptions): Promise<CompareReply> {
    const vm = await this.store.resolve(ref);
    const { req } = await this.request(vm, randomUUID(), opts, hostName());
    return peer.compare(req);
  }

  async move(ref: string, peer: MigrationPeer, opts: MoveOptions): Promise<MoveResult> {
    const vm0 = await this.store.resolve(ref);
    return this.supervisor.withLock(vm0.id, async () => {
      const vm = await this.store.get(vm0.id);
      const state = this.supervisor.stateOf(vm);
      if (state !== "Running" && state !== "Paused") {
        throw new VmhostError("invalid-state", `VM "${vm.name}" is ${state ?? (await this.supervisor.state(vm))}: a live migration needs it Running or Paused (move an Off VM with export and import)`, 409);
      }
      const migrationId = randomUUID();
      const messages: string[] = [];
      const { req, files } = await this.request(vm, migrationId, opts, hostName());
      const work = await mkdtemp(join(tmpdir(), "vmhost-move-"));
      try {
        // Files first sized (flattened images are made now), then announced.
        const sent: { rel: string; from: string; size: number; flattened: boolean }[] = [];
        for (const f of files) {
          let from = f.from;
          if (f.flatten) {
            from = join(work, basename(f.from));
            const d = req.checkpoints!.tree.checkpoints.flatMap((c) => c.disks).find((x) => x.path === f.from)!;
            await qemuImg(["convert", "-U", "-f", qemuDriverOf(d.format), "-O", "qcow2", f.from, from]);
          }
          sent.push({ rel: f.rel, from, size: (await stat(from)).size, flattened: f.flatten });
        }
        if (req.checkpoints) req.checkpoints.files = sent.map((s) => ({ rel: s.rel, size: s.size, ...(s.flattened ? { flattened: true } : {}) }));
        const cmp = await peer.compare(req);
        if (!cmp.fits) throw new VmhostError("migration-refused", `VM "${vm.name}" does not fit ${peer.name}: ${cmp.incompatibilities.map((i) => `${i.what} (${i.fix})`).join("; ")}`, 409);
        const tls = await makeMigrationTls(join(work, "ca"), opts.listenAddress);
        await writeTlsCredsDir(join(work, "client-tls"), { caCert: tls.caCert, clientCert: tls.clientCert, clientKey: tls.clientKey });
        req.tls = { caCert: tls.caCert, serverCert: tls.serverCert, serverKey: tls.serverKey, serverName: tls.serverName };
        await peer.prepare(req);
        try {
          for (const f of sent) await peer.upload(migrationId, f.rel, createReadStream(f.from));
          const start = await peer.start(migrationId);
          opts.onProgress?.("prepared", 1);
          const r = await this.supervisor.migrateOut(vm, {
            uri: start.migrationUri,
            tls: { dir: join(work, "client-tls"), hostname: tls.serverName },
            ...(start.nbd ? { mirrors: start.nbd.exports.map((e) => ({ slot: e.slot, host: start.nbd!.host, port: start.nbd!.port, exportName: e.exportName, sync: e.sync })) } : {}),
            ...(opts.downtimeLimitMs ? { downtimeLimitMs: opts.downtimeLimitMs } : {}),
            onProgress: (phase, f) => opts.onProgress?.(phase, f),
          });
          // The state is there; the destination runs the guest. Only its answer lets this host let go.
          try {
            await peer.finish(migrationId);
          } catch (err) {
            const st = await peer.status(migrationId).catch(() => undefined);
            if (st?.phase === "running") {
              // It runs there: the answer was lost on the way.
            } else if (st) {
              await peer.abort(migrationId).catch(() => undefined);
              await this.supervisor.resume(vm).catch(() => undefined);
              throw new VmhostError("migration-failed", `${peer.name} did not run the guest (${(err as Error).message}); VM "${vm.name}" runs on here`, 500);
            } else {
              throw new VmhostError(
                "migration-unconfirmed",
                `${peer.name} did not confirm that it runs the guest (${(err as Error).message}) and cannot be asked: VM "${vm.name}" is kept paused here so it never runs twice. Check ${peer.name}; if the VM does not run there, resume it here`,
                500,
              );
            }
          }
          await this.supervisor.event(vm, "moved", `moved to ${peer.name} by live migration (downtime ${r.downtimeMs ?? "?"} ms, total ${r.totalMs ?? "?"} ms)`, { destination: peer.name, ...r });
          await this.supervisor.releaseMigrated(vm, peer.name);
          await this.forget(vm, opts.includeStorage === true);
          await appendHostEvent(this.layout.hostEvents, { type: "vm-moved-away", vm: vm.name, vmId: vm.id, message: `VM "${vm.name}" moved to ${peer.name}`, data: { ...r } });
          messages.push(`VM "${vm.name}" runs on ${peer.name} now; nothing of it is left here${opts.includeStorage ? "" : " but its disks on the shared storage, which it uses there"}`);
          return { vm: vm.name, destination: peer.name, ...(r.downtimeMs !== undefined ? { downtimeMs: r.downtimeMs } : {}), ...(r.totalMs !== undefined ? { totalMs: r.totalMs } : {}), mirroredBytes: r.mirroredBytes, messages };
        } catch (err) {
          if (!(err instanceof VmhostError && err.code === "migration-unconfirmed")) await peer.abort(migrationId).catch(() => undefined);
          throw err;
        }
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    });
  }

  /** After a move: this host keeps nothing of the VM (its disks too when they were copied). */
  private async forget(vm: VmConfig, storageMoved: boolean): Promise<void> {
    const home = this.store.home(vm.id);
    await this.network.releaseTaps(vm).catch(() => undefined);
    if (storageMoved) {
      const tree = await this.checkpoints.readTree(home).catch(() => undefined);
      const images = [...vm.hardDisks.map((d) => d.path), ...(tree?.checkpoints.flatMap((c) => c.disks.map((d) => d.path)) ?? [])];
      // Only what vmhost made for this VM; a user's own file elsewhere is left where it was.
      for (const p of images) if (p.startsWith(this.layout.disksDir + "/") && (basename(p).startsWith(vm.id) || p.startsWith(home.checkpointDisksDir))) await rm(p, { force: true });
      await rm(home.checkpointDisksDir, { recursive: true, force: true });
    }
    await rm(home.dir, { recursive: true, force: true });
    this.store.invalidate(vm.id);
  }
}

/** This host's name as other hosts see it in events ($VMHOST_HOST_NAME, else the system's). */
export function hostName(): string {
  return process.env["VMHOST_HOST_NAME"] || osHostname();
}
