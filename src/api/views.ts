import { z } from "zod";
import { CheckpointType, DvdDrive, FirmwareSettings, Generation, HardDisk, NetworkAdapter, VmState } from "../model/schema.js";
import { Role } from "./roles.js";

/**
 * Reply shapes of the API. vmhostd's handlers are typed against these (a view that drifts from
 * its schema does not compile), the SDK and CLI read their types from them, and the OpenAPI
 * document describes them. Objects list the fields the API promises; a
 * reply may carry more (the schemas strip, they do not refuse).
 */

export const Diagnosis = z
  .object({ id: z.string(), title: z.string(), explanation: z.string(), fix: z.string(), evidence: z.array(z.string()), at: z.string() });

export const ExitRecord = z.object({ at: z.string(), reason: z.string(), consoleTail: z.array(z.string()) });

export const VmView = z.object({
  name: z.string(),
  id: z.string(),
  generation: Generation,
  state: VmState,
  cpus: z.number(),
  memoryMiB: z.number(),
  notes: z.string(),
  checkpointType: CheckpointType,
  display: z.boolean(),
  disks: z.array(HardDisk.and(z.object({ ref: z.string() }))),
  dvds: z.array(DvdDrive.and(z.object({ ref: z.string() }))),
  nics: z.array(NetworkAdapter.and(z.object({ ref: z.string() }))),
  floppy: z.string().nullable().optional(),
  firmware: FirmwareSettings,
  appliance: z.object({ id: z.string(), kernel: z.string() }).optional(),
  pid: z.number().optional(),
  startedAt: z.string().optional(),
  accelerator: z.string().optional(),
  acceleratorReason: z.string().optional(),
  hasSavedState: z.boolean(),
  lastExit: ExitRecord.optional(),
  heartbeat: z.object({ status: z.string(), detail: z.string() }).optional(),
  diagnosis: Diagnosis.nullable(),
  /** Host paths of the VM's files: given to local (unix socket) callers only. */
  paths: z.object({ dir: z.string(), config: z.string(), console: z.string(), serialSocket: z.string().optional() }).optional(),
});
export type VmView = z.infer<typeof VmView>;

export const ListEntry = z.object({
  name: z.string(),
  id: z.string().optional(),
  generation: Generation.optional(),
  state: z.union([VmState, z.literal("Damaged")]),
  cpus: z.number().optional(),
  memoryMiB: z.number().optional(),
  error: z.string().optional(),
  heartbeat: z.string().optional(),
});
export type ListEntry = z.infer<typeof ListEntry>;

export const StateReply = z.object({ state: VmState });
export const StopReply = z.object({ state: VmState, forced: z.boolean() });
export const RemoveReply = z.object({ deletedDisks: z.array(z.string()), keptDisks: z.array(z.string()) });
export const ConsoleLog = z.object({ log: z.string() });

export const VmEvent = z.object({
  at: z.string(),
  vmId: z.string(),
  vm: z.string(),
  type: z.string(),
  message: z.string(),
  data: z.record(z.unknown()).optional(),
});
export type VmEvent = z.infer<typeof VmEvent>;
/** One line of `GET /v1/vms/{vm}/events/follow` (NDJSON). */
export const EventLine = z.discriminatedUnion("type", [
  z.object({ type: z.literal("event"), event: VmEvent }),
  z.object({ type: z.literal("following") }),
  z.object({ type: z.literal("error"), error: z.object({ code: z.string(), message: z.string() }) }),
]);

export const HostView = z.record(z.unknown());
export const AcceleratorView = z.object({ accel: z.string(), reason: z.string(), probedAt: z.string() });
export const ApplianceView = z.object({ dir: z.string(), manifest: z.object({ id: z.string() }), log: z.array(z.string()) });

const FirmwareEntry = z
  .object({
    id: z.string(),
    /** stored | missing (BootOrder names no Boot####) | duplicate | pending (vmhost adds it before the next start). */
    status: z.enum(["stored", "missing", "duplicate", "pending"]),
    position: z.number().nullable(),
    bootType: z.string(),
    description: z.string(),
    firmwarePath: z.string(),
    device: z.object({ type: z.string(), ref: z.string(), path: z.string().nullable().optional(), macAddress: z.string().optional() }).nullable(),
    protocol: z.string().nullable().optional(),
    active: z.boolean(),
    hidden: z.boolean(),
    inBootOrder: z.boolean(),
    optionalDataLength: z.number(),
    optionalDataHex: z.string(),
    pendingAction: z.object({ action: z.enum(["add", "remove", "rewrite"]), description: z.string() }).nullable(),
    recreatedAtBoot: z.string().nullable(),
  });
export const FirmwareView = z
  .object({
    vm: z.string(),
    generation: Generation,
    state: z.string(),
    bootOrder: z.array(FirmwareEntry).optional(),
    bootNext: z.string().nullable().optional(),
    preferredNetworkBootProtocol: z.enum(["IPv4", "IPv6"]).optional(),
    secureBoot: z.enum(["On", "Off"]).optional(),
    secureBootTemplate: z.string().optional(),
    secureBootTemplateId: z.string().optional(),
    nvram: z.object({ secureBoot: z.boolean(), setupMode: z.boolean(), db: z.array(z.string()), file: z.string() }).optional(),
    secureBootInForce: z.string().optional(),
    pauseAfterBootFailure: z.boolean().optional(),
    lastBootFailure: z
      .object({ at: z.string(), entry: z.string(), description: z.string(), reason: z.string(), paused: z.boolean() })
      
      .nullable()
      .optional(),
    networkBootPayload: z.object({ dir: z.string(), file: z.string() }).nullable().optional(),
    startupOrder: z.array(z.string()).optional(),
    pending: z.array(z.object({ op: z.string(), detail: z.string(), at: z.string() })),
    pendingReason: z.string().optional(),
    pendingBootOrder: z.array(z.string()).nullable().optional(),
  });
export type FirmwareView = z.infer<typeof FirmwareView>;
export const FirmwareSetResult = z.object({ view: FirmwareView, messages: z.array(z.string()), pending: z.boolean() });

export const ServiceStatus = z.object({ name: z.string(), key: z.string(), enabled: z.boolean(), primaryStatus: z.string(), detail: z.string() });
export const IntegrationView = z.object({ vm: z.string(), state: z.string(), services: z.array(ServiceStatus) });
export const KvpPools = z.record(z.record(z.string()));
export const KvpSetReply = z.object({ key: z.string(), value: z.string(), delivered: z.boolean(), note: z.string().optional() });
export const KvpRemoveReply = z.object({ key: z.string(), removed: z.boolean(), delivered: z.boolean(), note: z.string().optional() });
export const VssReply = z.record(z.unknown());
export const CopyResult = z.object({
  source: z.string(),
  destination: z.string(),
  bytes: z.number(),
  sha256: z.string(),
  verifiedBy: z.enum(["sha256sum", "read-back"]),
  seconds: z.number(),
});

export const SwitchView = z
  .object({
    name: z.string(),
    type: z.string(),
    builtIn: z.boolean(),
    id: z.string().optional(),
    netAdapter: z.string().optional(),
    subnet: z.string().optional(),
    hostAddress: z.string().optional(),
    ipv6Prefix: z.string().optional(),
    dhcp: z.boolean(),
    boot: z.object({ dir: z.string(), file: z.string() }).optional(),
    notes: z.string().optional(),
    status: z
      .object({ bridge: z.string(), bridgePresent: z.boolean(), dnsmasqPid: z.number().optional(), firewall: z.array(z.string()) })
      
      .optional(),
    adapters: z.array(z.object({ vm: z.string(), adapter: z.string(), macAddress: z.string(), running: z.boolean() })),
    paths: z.object({ config: z.string(), state: z.string() }).optional(),
  });
export type SwitchView = z.infer<typeof SwitchView>;
export const SwitchRemoved = z.object({ removed: z.string(), disconnected: z.array(z.object({ vm: z.string(), adapter: z.string() })) });
export const NetbootPayload = z.object({ dir: z.string(), marker: z.string(), files: z.array(z.string()), markerLine: z.string() });

// ---- checkpoints ----------------------------------------------------------------------------------

export const CheckpointView = z.object({
  id: z.string(),
  name: z.string(),
  parentId: z.string().nullable(),
  depth: z.number(),
  createdAt: z.string(),
  type: z.enum(["Standard", "Production"]),
  hasMemory: z.boolean(),
  isCurrent: z.boolean(),
  children: z.array(z.string()),
  disks: z.array(z.string()),
});
export const CheckpointList = z.object({
  vm: z.string(),
  checkpointType: CheckpointType,
  current: z.string().nullable(),
  checkpoints: z.array(CheckpointView),
  removing: z.string().optional(),
});
export const CheckpointResult = z.object({ vm: z.string(), checkpoint: CheckpointView, messages: z.array(z.string()), pausedMs: z.number().optional() });
export type CheckpointResult = z.infer<typeof CheckpointResult>;
export const CheckpointRemoved = z.object({ vm: z.string(), removed: z.array(z.string()), messages: z.array(z.string()) });
export type CheckpointRemoved = z.infer<typeof CheckpointRemoved>;

// ---- jobs ---------------------------------------------------------------------------------------

export const JobState = z.enum(["running", "succeeded", "failed", "cancelled"]);
export const JobView = z.object({
  id: z.string(),
  kind: z.string(),
  /** The VM the job works on, when it is about one. */
  vm: z.string().optional(),
  state: JobState,
  /** Progress in the job's own unit (bytes for copies); total 0 while unknown. */
  progress: z.object({ done: z.number(), total: z.number(), phase: z.string().optional() }),
  cancellable: z.boolean(),
  startedAt: z.string(),
  endedAt: z.string().optional(),
  by: z.string(),
  result: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type JobView = z.infer<typeof JobView>;
/** One line of `GET /v1/jobs/{id}/follow` (NDJSON): the job as it is now, then at each change until it ends. */
export const JobLine = z.object({ type: z.literal("job"), job: JobView });

// ---- media, access control, audit ------------------------------------------------------------------

export const MediaFile = z.object({ name: z.string(), path: z.string(), bytes: z.number(), modifiedAt: z.string() });

export const Identity = z.object({
  /** "local uid 1000 (alice)", "token ci", "certificate laptop", "session of token web" */
  name: z.string(),
  kind: z.enum(["local", "token", "certificate", "session"]),
  role: Role,
  transport: z.enum(["unix", "https"]),
});
export type Identity = z.infer<typeof Identity>;

export const TokenView = z.object({ name: z.string(), role: Role, createdAt: z.string(), lastUsedAt: z.string().optional() });
export const TokenCreated = TokenView.extend({ token: z.string() });
export const TrustView = z.object({
  name: z.string(),
  role: Role,
  fingerprint: z.string(),
  addedAt: z.string(),
  subject: z.string().optional(),
});
export const TrustTokenCreated = z.object({ name: z.string(), role: Role, token: z.string(), expiresAt: z.string() });
export const TrustList = z.object({ certificates: z.array(TrustView), pending: z.array(z.object({ name: z.string(), role: Role, expiresAt: z.string() })) });
export const Redeemed = z.object({ name: z.string(), role: Role, fingerprint: z.string() });
export const SessionView = z.object({ identity: Identity, csrfToken: z.string().optional(), expiresAt: z.string().optional() });
export const ListenView = z.object({
  address: z.string().nullable(),
  listening: z.boolean(),
  /** The port bound while listening (the configured one, or the one picked for port 0). */
  port: z.number().nullable(),
  fingerprint: z.string().nullable(),
  error: z.string().optional(),
});
export const AuditEntry = z.object({
  at: z.string(),
  who: z.string(),
  role: Role,
  transport: z.enum(["unix", "https"]),
  route: z.string(),
  method: z.string(),
  path: z.string(),
  target: z.string().optional(),
  result: z.enum(["ok", "error", "denied"]),
  status: z.number(),
  error: z.string().optional(),
});
export type AuditEntry = z.infer<typeof AuditEntry>;
export const Ok = z.object({ ok: z.literal(true) });

/** A reply whose shape is its producer's (a service object passed through as JSON; documented there). */
export const Passthrough = z.object({}).passthrough();

export const PeerView = z.object({ name: z.string(), url: z.string(), fingerprint: z.string(), role: z.string(), addedAt: z.string() });
export const MoveCompare = z.object({ fits: z.boolean(), incompatibilities: z.array(z.object({ what: z.string(), fix: z.string() })) });
export const MigrationStart = z.object({
  migrationUri: z.string(),
  nbd: z.object({ host: z.string(), port: z.string(), exports: z.array(z.object({ slot: z.string(), exportName: z.string(), sync: z.enum(["full", "top"]) })) }).optional(),
});
export const MigrationStatus = z.object({ migrationId: z.string(), vm: z.string(), phase: z.enum(["prepared", "waiting", "received", "running", "gone"]) });
