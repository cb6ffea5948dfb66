import { z } from "zod";
import { CheckpointType, DiskFormat, Gen1BootDevice, SecureBootTemplate } from "../model/schema.js";
import { Role } from "./roles.js";

/**
 * Request shapes of the API: bodies, path parameters and query strings, validated at the edge
 * by vmhostd and typed for the SDK and the CLI. Limits are generous upper bounds that keep a
 * request from holding unbounded memory; the domain's own rules (names, sizes, slots) are
 * checked behind them.
 */

/** A VM named by its name or its id (URL-encoded in the path; names may hold spaces and any Unicode). */
export const VmRef = z.string().min(1, "the VM name or id is empty").max(256);
/** A switch, trust entry or token named in a path. */
export const Name = z.string().min(1, "the name is empty").max(128);

/** Query booleans: "true"/"false"/"1"/"0" (a query string has no other booleans). */
export const QueryBool = z
  .enum(["true", "false", "1", "0"], { errorMap: () => ({ message: 'must be "true" or "false"' }) })
  .transform((v) => v === "true" || v === "1");

export const NewDisk = z.object({ sizeBytes: z.number().int().positive(), format: DiskFormat }).strict();

export const CreateVm = z
  .object({
    name: z.string().max(256),
    generation: z.union([z.literal(1), z.literal(2)]),
    processorCount: z.number().int().min(1).optional(),
    memoryMiB: z.number().int().min(1).optional(),
    /** An existing disk image (a host path: local callers, or a file uploaded to the media folder). */
    disk: z.string().min(1).max(4096).optional(),
    diskFormat: DiskFormat.optional(),
    newDisk: NewDisk.optional(),
    /** An ISO (host path, see `disk`). */
    dvd: z.string().min(1).max(4096).optional(),
    appliance: z.boolean().optional(),
    notes: z.string().max(4096).optional(),
  })
  .strict();

export const SetVm = z
  .object({
    processorCount: z.number().int().min(1).optional(),
    memoryMiB: z.number().int().min(1).optional(),
    notes: z.string().max(4096).optional(),
    checkpointType: CheckpointType.optional(),
    display: z.boolean().optional(),
  })
  .strict();

export const Rename = z.object({ name: z.string().max(256) }).strict();
export const Stop = z
  .object({ force: z.boolean().default(false), timeoutSeconds: z.number().positive().max(3600).default(60) })
  .strict();
export const Remove = z.object({ deleteDisks: QueryBool.optional() }).strict();

export const DiskAdd = z
  .object({
    path: z.string().min(1).max(4096).optional(),
    format: DiskFormat.optional(),
    newDisk: NewDisk.optional(),
    controllerType: z.enum(["IDE", "SCSI"]).optional(),
    controllerNumber: z.number().int().min(0).optional(),
    controllerLocation: z.number().int().min(0).optional(),
  })
  .strict();
export const DeviceRef = z.object({ ref: z.string().min(1).max(4096) }).strict();
export const DvdSet = z.object({ path: z.string().min(1).max(4096).nullable(), drive: z.string().max(64).optional() }).strict();
export const FloppySet = z.object({ path: z.string().min(1).max(4096).nullable() }).strict();
export const NicAdd = z
  .object({
    legacy: z.boolean().default(false),
    name: z.string().min(1).max(64).optional(),
    mac: z.string().max(64).optional(),
    switchName: z.string().min(1).max(64).optional(),
  })
  .strict();
export const NicConnect = z.object({ adapter: z.string().min(1).max(64), switchName: z.string().min(1).max(64) }).strict();
export const ApplianceBuild = z.object({ force: z.boolean().default(false) }).strict();

/** Set-VMFirmware (service/firmware.ts applies it). */
export const FirmwareSetRequest = z
  .object({
    firstBootDevice: z.string().min(1).optional(),
    bootOrder: z.array(z.string().min(1)).min(1).optional(),
    prune: z.boolean().default(false),
    pruneFiles: z.boolean().default(false),
    preferredNetworkBootProtocol: z.enum(["IPv4", "IPv6"]).optional(),
    pauseAfterBootFailure: z.boolean().optional(),
    secureBoot: z.boolean().optional(),
    secureBootTemplate: SecureBootTemplate.optional(),
    startupOrder: z.array(Gen1BootDevice).optional(),
    networkBootPayload: z.object({ dir: z.string().min(1), file: z.string().min(1) }).strict().nullable().optional(),
  })
  .strict();
export type FirmwareSetRequest = z.infer<typeof FirmwareSetRequest>;

/** Checkpoint-VM, Restore-/Remove-/Rename-VMSnapshot; a checkpoint is named by its name or id. */
export const CheckpointCreate = z.object({ name: z.string().min(1).max(400).optional() }).strict();
export const CheckpointApply = z.object({ checkpoint: z.string().min(1).max(400), checkpointCurrent: z.boolean().default(false) }).strict();
export const CheckpointRemove = z.object({ checkpoint: z.string().min(1).max(400), subtree: z.boolean().default(false) }).strict();
export const CheckpointRename = z.object({ checkpoint: z.string().min(1).max(400), name: z.string().min(1).max(400) }).strict();

export const IntegrationSet = z.object({ service: z.string().min(1).max(64), enabled: z.boolean() }).strict();
export const KvpPool = z.enum(["intrinsic", "guest", "external"]);
export const KvpSet = z.object({ key: z.string().max(4096), value: z.string().max(16384) }).strict();
export const KvpRemove = z.object({ key: z.string().max(4096) }).strict();
export const Freeze = z.object({ timeoutSeconds: z.number().positive().max(300).optional() }).strict();

/** Copy-VMFile from a host path: local callers only (remote ones upload, see CopyFileUpload). */
export const CopyFile = z
  .object({
    source: z.string().min(1).max(4096),
    destination: z.string().min(1).max(4096),
    createFullPath: z.boolean().default(false),
    force: z.boolean().default(false),
  })
  .strict();
/** Copy-VMFile of the request body (application/octet-stream): the query names the guest path. */
export const CopyFileUpload = z
  .object({
    destination: z.string().min(1).max(4096),
    createFullPath: QueryBool.optional(),
    force: QueryBool.optional(),
  })
  .strict();

export const SwitchNew = z
  .object({
    name: z.string().min(1).max(64),
    type: z.enum(["external", "internal", "private", "nat"]),
    netAdapter: z.string().min(1).max(15).optional(),
    subnet: z.string().min(1).max(64).optional(),
    ipv6Prefix: z.string().min(1).max(64).optional(),
    dhcp: z.boolean().optional(),
    bootDir: z.string().min(1).max(4096).optional(),
    bootFile: z.string().min(1).max(255).optional(),
  })
  .strict();
export const Netboot = z.object({ dir: z.string().min(1).max(4096), marker: z.string().min(1).max(64).optional() }).strict();

/** A file name in the media folder: no folders, no dot files, no control characters. */
export const MediaName = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[^/\\\0-\x1f\x7f.][^/\\\0-\x1f\x7f]*$/, "must be a plain file name (no folders, not starting with a dot)");

export const TrustAdd = z.object({ name: Name, role: Role.default("administrator"), expiresInSeconds: z.number().int().min(60).max(7 * 86400).default(86400) }).strict();
export const TrustRedeem = z.object({ secret: z.string().min(16).max(256) }).strict();
export const TokenAdd = z.object({ name: Name, role: Role }).strict();
export const Login = z.object({ token: z.string().min(16).max(512) }).strict();
export const Listen = z.object({ address: z.string().min(1).max(300) }).strict();
export const JobId = z.string().regex(/^[0-9a-f-]{36}$/, "is not a job id");
export const AuditQuery = z.object({ limit: z.coerce.number().int().min(1).max(10000).optional() }).strict();

// ---- VMs that travel (Export-VM, Import-VM, Convert-VMGeneration, the VHD tools) ----
export {
  CompactVhdRequestSchema as VhdCompact,
  ConvertVhdRequestSchema as VhdConvert,
  GetVhdRequestSchema as VhdGet,
  MergeVhdRequestSchema as VhdMerge,
  ResizeVhdRequestSchema as VhdResize,
} from "../images/vhd-api.js";
import { NewVhdRequestSchema } from "../images/vhd-api.js";
/** New-VHD's request object; its cross-field rules (a differencing disk names its parent) are checked by the handler with the full schema. */
export const VhdNew = NewVhdRequestSchema.innerType();

/** Hyper-V's Export-VM -CaptureLiveState values. */
export const CaptureLiveState = z.enum(["CaptureSavedState", "CaptureDataConsistentState", "CaptureCrashConsistentState"]);
export const Export = z.object({ destination: z.string().min(1).max(4096), captureLiveState: CaptureLiveState.optional() }).strict();
export const Import = z
  .object({
    path: z.string().min(1).max(4096),
    mode: z.enum(["register", "copy"]).default("register"),
    generateNewId: z.boolean().default(false),
    vhdDestination: z.string().min(1).max(4096).optional(),
    name: z.string().min(1).max(400).optional(),
    /** Switch OLD -> NEW for the imported adapters. */
    switchMap: z.record(z.string().min(1), z.string().min(1)).optional(),
  })
  .strict();
export const ConvertGeneration = z
  .object({
    newName: z.string().min(1).max(400).optional(),
    dryRun: z.boolean().default(false),
    boot: z.boolean().default(true),
    bootTimeoutSeconds: z.number().int().positive().max(3600).optional(),
  })
  .strict();

// ---- many hosts: peers and live migration (Move-VM) ----
export const PeerAdd = z.object({ name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, "is not a peer name (letters, digits, . _ -)"), url: z.string().url(), token: z.string().min(16).max(4096) }).strict();
export const Move = z
  .object({
    destination: z.string().min(1).max(63),
    includeStorage: z.boolean().default(false),
    destinationStoragePath: z.string().min(1).max(4096).optional(),
    /** The destination address the streams use: a network the user names (default: the peer's API address). */
    migrationAddress: z.string().min(1).max(255).optional(),
    downtimeLimitMs: z.number().int().min(10).max(60_000).optional(),
  })
  .strict();
export { PrepareRequest as MigrationPrepare } from "./migration.js";
export const MigrationId = z.object({ id: z.string().uuid() }).strict();
export const MigrationUpload = z.object({ rel: z.string().regex(/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/, "is not a relative file name") }).strict();
