import { EventEmitter } from "node:events";
import { QmpClient, type QmpEvent } from "./qmp.js";

/**
 * vmhost's QMP verbs: one typed method per QEMU command vmhost uses, with typed arguments and
 * replies (shapes from QEMU 7.2's qapi schema: qapi/run-state.json, block-core.json,
 * migration.json, block-export.json, qdev.json). Nothing else in vmhost spells a QMP command.
 */

/** query-status's RunState (qapi/run-state.json), the values vmhost acts on. */
export type QemuRunState =
  | "running"
  | "paused"
  | "suspended"
  | "inmigrate"
  | "prelaunch"
  | "postmigrate"
  | "finish-migrate"
  | "shutdown"
  | "save-vm"
  | "restore-vm"
  | "internal-error"
  | "io-error"
  | "guest-panicked"
  | "debug"
  | "watchdog"
  | "colo";

/** BlockdevOptions (qapi/block-core.json), the drivers vmhost uses. */
export type BlockdevOptions =
  | { driver: "file"; "node-name"?: string; filename: string; "read-only"?: boolean; locking?: "on" | "off" | "auto" }
  | {
      driver: "raw" | "qcow2" | "vhdx" | "vpc";
      "node-name": string;
      file: BlockdevOptions | string;
      "read-only"?: boolean;
      /** qcow2 overlays: the backing node (or null for none). */
      backing?: BlockdevOptions | string | null;
    }
  | { driver: "nbd"; "node-name": string; server: { type: "inet"; host: string; port: string } | { type: "unix"; path: string }; export: string; "tls-creds"?: string };

/** device_add / -device properties: the driver and its properties. */
export type DeviceProps = { driver: string; id: string } & Record<string, string | number | boolean>;

export type MigrationStatus = "none" | "setup" | "cancelling" | "cancelled" | "active" | "postcopy-active" | "postcopy-paused" | "postcopy-recover" | "completed" | "failed" | "colo" | "pre-switchover" | "device" | "wait-unplug";

/** query-migrate's MigrationInfo, the fields vmhost reads. */
export interface MigrationInfo {
  status?: MigrationStatus;
  "error-desc"?: string;
  "total-time"?: number;
  downtime?: number;
  "expected-downtime"?: number;
  ram?: { transferred: number; remaining: number; total: number; "dirty-pages-rate"?: number; mbps?: number };
}

/** One running block job (query-block-jobs, BlockJobInfo). */
export interface BlockJobInfo {
  type: string;
  device: string;
  len: number;
  offset: number;
  busy: boolean;
  paused: boolean;
  speed: number;
  ready: boolean;
  status: string;
  error?: string;
}

/** One job of query-jobs (JobInfo). */
export interface JobInfo {
  id: string;
  type: string;
  status: "undefined" | "created" | "running" | "paused" | "ready" | "standby" | "waiting" | "pending" | "aborting" | "concluded" | "null";
  "current-progress": number;
  "total-progress": number;
  error?: string;
}

/** One node of query-named-block-nodes (BlockDeviceInfo), the fields vmhost reads. */
export interface BlockNodeInfo {
  "node-name": string;
  drv: string;
  file: string;
  ro: boolean;
  "backing_file"?: string;
  "backing_file_depth": number;
}

/** One entry of query-block (BlockInfo): a drive, the device it is attached to, and its top node. */
export interface BlockInfo {
  device: string;
  /** The device's qdev id or QOM path. */
  qdev?: string;
  inserted?: { "node-name": string; file: string; drv: string; ro: boolean };
}

/** The transaction actions vmhost uses (qapi/transaction.json). */
export type TransactionAction =
  | { type: "blockdev-snapshot"; data: { node: string; overlay: string } }
  | { type: "blockdev-snapshot-sync"; data: { "node-name": string; "snapshot-file": string; "snapshot-node-name": string; format: "qcow2"; mode?: "existing" | "absolute-paths" } };

/** QMP events vmhost acts on (qapi/*.json), as a typed map for listeners. */
export interface QemuEvents {
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
  SHUTDOWN: { guest: boolean; reason: string };
  RESET: { guest: boolean; reason: string };
  POWERDOWN: Record<string, never>;
  DEVICE_DELETED: { device?: string; path: string };
  MIGRATION: { status: MigrationStatus };
  JOB_STATUS_CHANGE: { id: string; status: string };
  BLOCK_JOB_READY: { type: string; device: string; len: number; offset: number; speed: number };
  BLOCK_JOB_COMPLETED: { type: string; device: string; len: number; offset: number; speed: number; error?: string };
  BLOCK_JOB_ERROR: { device: string; operation: string; action: string };
}

/** A QEMU's monitor: its QMP connection and typed verbs over it. Emits "event" (QmpEvent) and "close". */
export class QemuMonitor extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private constructor(readonly qmp: QmpClient) {
    super();
    qmp.on("event", (ev: QmpEvent) => this.emit("event", ev));
    qmp.once("close", () => this.emit("close"));
  }

  /** Connects to a QMP socket and negotiates capabilities. */
  static async connect(socket: string, timeoutMs = 5000): Promise<QemuMonitor> {
    return new QemuMonitor(await QmpClient.connect(socket, timeoutMs));
  }

  get isClosed(): boolean {
    return this.qmp.isClosed;
  }

  close(): void {
    this.removeAllListeners();
    this.qmp.removeAllListeners("close");
    this.qmp.close();
  }

  /** Resolves with the first event of that name for which `match` holds; rejects after the timeout or when QEMU goes. */
  waitForEvent<K extends keyof QemuEvents>(name: K, match: (data: QemuEvents[K]) => boolean = () => true, timeoutMs = 30_000): Promise<QemuEvents[K]> {
    return new Promise((resolve, reject) => {
      const onEvent = (ev: QmpEvent) => {
        if (ev.event !== name) return;
        const data = (ev.data ?? {}) as unknown as QemuEvents[K];
        if (!match(data)) return;
        done();
        resolve(data);
      };
      const onClose = () => {
        done();
        reject(new Error(`QEMU went away while waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${name} event from QEMU within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.off("event", onEvent);
        this.off("close", onClose);
      };
      this.on("event", onEvent);
      this.once("close", onClose);
    });
  }

  // ---- run state (qapi/run-state.json, misc.json) ----
  async queryStatus(): Promise<{ status: QemuRunState; running: boolean }> {
    return this.qmp.execute("query-status");
  }
  stop(): Promise<void> {
    return this.qmp.execute("stop");
  }
  cont(): Promise<void> {
    return this.qmp.execute("cont");
  }
  systemReset(): Promise<void> {
    return this.qmp.execute("system_reset");
  }
  systemPowerdown(): Promise<void> {
    return this.qmp.execute("system_powerdown");
  }
  quit(timeoutMs = 3000): Promise<void> {
    return this.qmp.execute("quit", undefined, timeoutMs);
  }

  // ---- migration (qapi/migration.json) ----
  migrate(uri: string): Promise<void> {
    return this.qmp.execute("migrate", { uri });
  }
  migrateIncoming(uri: string): Promise<void> {
    return this.qmp.execute("migrate-incoming", { uri });
  }
  migrateCancel(): Promise<void> {
    return this.qmp.execute("migrate_cancel");
  }
  migrateSetParameters(p: { "max-bandwidth"?: number; "downtime-limit"?: number; "tls-creds"?: string; "tls-hostname"?: string; "tls-authz"?: string }): Promise<void> {
    return this.qmp.execute("migrate-set-parameters", p);
  }
  migrateSetCapabilities(caps: { capability: string; state: boolean }[]): Promise<void> {
    return this.qmp.execute("migrate-set-capabilities", { capabilities: caps });
  }
  queryMigrate(): Promise<MigrationInfo> {
    return this.qmp.execute("query-migrate");
  }

  // ---- block devices (qapi/block-core.json, block.json) ----
  blockdevAdd(opts: BlockdevOptions): Promise<void> {
    return this.qmp.execute("blockdev-add", opts as unknown as Record<string, unknown>);
  }
  blockdevDel(nodeName: string): Promise<void> {
    return this.qmp.execute("blockdev-del", { "node-name": nodeName });
  }
  blockdevSnapshot(node: string, overlay: string): Promise<void> {
    return this.qmp.execute("blockdev-snapshot", { node, overlay });
  }
  transaction(actions: TransactionAction[]): Promise<void> {
    return this.qmp.execute("transaction", { actions });
  }
  queryBlock(): Promise<BlockInfo[]> {
    return this.qmp.execute("query-block");
  }
  queryNamedBlockNodes(): Promise<BlockNodeInfo[]> {
    return this.qmp.execute("query-named-block-nodes", { flat: true });
  }
  blockStream(jobId: string, device: string, opts: { baseNode?: string } = {}): Promise<void> {
    return this.qmp.execute("block-stream", { "job-id": jobId, device, ...(opts.baseNode ? { "base-node": opts.baseNode } : {}), "auto-dismiss": false });
  }
  blockCommit(jobId: string, device: string, topNode: string, baseNode: string): Promise<void> {
    return this.qmp.execute("block-commit", { "job-id": jobId, device, "top-node": topNode, "base-node": baseNode, "auto-dismiss": false });
  }
  blockdevMirror(jobId: string, device: string, target: string, sync: "full" | "top" | "none"): Promise<void> {
    return this.qmp.execute("blockdev-mirror", { "job-id": jobId, device, target, sync, "auto-dismiss": false });
  }
  queryBlockJobs(): Promise<BlockJobInfo[]> {
    return this.qmp.execute("query-block-jobs");
  }
  blockJobCancel(device: string, force = false): Promise<void> {
    return this.qmp.execute("block-job-cancel", { device, force });
  }
  blockJobComplete(device: string): Promise<void> {
    return this.qmp.execute("block-job-complete", { device });
  }
  /** query-jobs (qapi/job.json): every job with its status ("running", "ready", "concluded", ...) and progress. */
  queryJobs(): Promise<JobInfo[]> {
    return this.qmp.execute("query-jobs");
  }
  jobDismiss(id: string): Promise<void> {
    return this.qmp.execute("job-dismiss", { id });
  }

  // ---- removable media (qapi/block.json) ----
  eject(id: string, force = true): Promise<void> {
    return this.qmp.execute("eject", { id, force });
  }
  blockdevChangeMedium(id: string, filename: string, format: "raw", readOnlyMode: "read-only" | "retain"): Promise<void> {
    return this.qmp.execute("blockdev-change-medium", { id, filename, format, "read-only-mode": readOnlyMode });
  }

  // ---- devices (qapi/qdev.json) ----
  deviceAdd(props: DeviceProps): Promise<void> {
    return this.qmp.execute("device_add", props);
  }
  deviceDel(id: string): Promise<void> {
    return this.qmp.execute("device_del", { id });
  }

  // ---- objects (qapi/qom.json) ----
  /** object-add of x509 TLS credentials (a live migration's, on the sending side). */
  objectAddTlsCreds(id: string, dir: string, endpoint: "server" | "client"): Promise<void> {
    return this.qmp.execute("object-add", { "qom-type": "tls-creds-x509", id, dir, endpoint, "verify-peer": endpoint === "server" });
  }
  objectDel(id: string): Promise<void> {
    return this.qmp.execute("object-del", { id });
  }

  // ---- NBD (qapi/block-export.json) ----
  nbdServerStart(addr: { type: "inet"; host: string; port: string } | { type: "unix"; path: string }, tlsCreds?: string): Promise<void> {
    return this.qmp.execute("nbd-server-start", { addr: addr.type === "inet" ? { type: "inet", data: { host: addr.host, port: addr.port } } : { type: "unix", data: { path: addr.path } }, ...(tlsCreds ? { "tls-creds": tlsCreds } : {}) });
  }
  nbdServerStop(): Promise<void> {
    return this.qmp.execute("nbd-server-stop");
  }
  /** An NBD export of `nodeName`, named `id` (the export name clients ask for; QEMU's default would be the node name). */
  blockExportAdd(id: string, nodeName: string, writable: boolean): Promise<void> {
    return this.qmp.execute("block-export-add", { type: "nbd", id, "node-name": nodeName, name: id, writable });
  }
  blockExportDel(id: string): Promise<void> {
    return this.qmp.execute("block-export-del", { id, mode: "hard" });
  }
}
