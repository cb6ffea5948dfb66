import { z } from "zod";
import { CheckpointTree } from "../checkpoints/tree.js";
import { DiskFormat, VmConfig } from "../model/schema.js";

/**
 * What two vmhostd hosts say to each other to move a running VM (Move-VM), over the
 * authenticated host-to-host API. The source drives; the destination prepares, receives, and
 * finishes or throws everything away:
 *
 *   compare -> prepare (reserve, validate) -> [upload checkpoint files] -> start (QEMU waits,
 *   NBD exports) -> the source mirrors and migrates -> finish (the guest runs there) | abort
 *
 * The destination never runs the guest before `finish`; until then an abort, or the destination
 * service's own restart, leaves nothing behind.
 */

/** One disk as the source has it. With storage moving, the destination makes its own image of that size. */
export const MigrationDisk = z
  .object({
    slot: z.string(),
    path: z.string(),
    format: DiskFormat,
    virtualSize: z.number().int().positive(),
  })
  .strict();
export type MigrationDisk = z.infer<typeof MigrationDisk>;

/** A file of the VM's checkpoints the source sends (its path relative to the checkpoint data). */
export const MigrationFile = z
  .object({
    rel: z.string().regex(/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/),
    size: z.number().int().nonnegative(),
    /** An image sent with its backing chain folded in (its base is not the VM's own file). */
    flattened: z.boolean().optional(),
  })
  .strict();

export const PrepareRequest = z
  .object({
    migrationId: z.string().uuid(),
    sourceHost: z.string().min(1).max(255),
    config: VmConfig,
    includeStorage: z.boolean(),
    /** Where the destination keeps moved disks (a folder under its home; default its disks folder). */
    destinationStoragePath: z.string().min(1).optional(),
    disks: z.array(MigrationDisk),
    /** With storage: the checkpoint tree and the files its checkpoints keep (sent before start). */
    checkpoints: z.object({ tree: CheckpointTree, files: z.array(MigrationFile) }).strict().optional(),
    /** The destination's server half of the migration's throw-away TLS material (PEM). */
    tls: z.object({ caCert: z.string(), serverCert: z.string(), serverKey: z.string(), serverName: z.string() }).strict().nullable(),
    /** The address the destination listens on for the streams (one it has; its API address by default). */
    listenAddress: z.string().min(1),
  })
  .strict();
export type PrepareRequest = z.infer<typeof PrepareRequest>;

/** One thing that would not fit on the destination, with what to do about it (Compare-VM). */
export interface Incompatibility {
  what: string;
  fix: string;
}

export interface CompareReply {
  fits: boolean;
  incompatibilities: Incompatibility[];
}

export interface StartReply {
  /** Where the source sends the migration stream (QEMU URI). */
  migrationUri: string;
  /** With storage: the NBD server and an export per disk, for the source's drive mirrors. */
  nbd?: { host: string; port: string; exports: { slot: string; exportName: string; sync: "full" | "top" }[] };
}

export interface IncomingStatus {
  migrationId: string;
  vm: string;
  /** prepared | waiting (QEMU waits for the stream) | received (paused, state in) | running | gone */
  phase: "prepared" | "waiting" | "received" | "running" | "gone";
}

/** The destination as the source sees it (the host-to-host API client; in-process for tests). */
export interface MigrationPeer {
  /** The destination's name (for events and messages). */
  readonly name: string;
  compare(req: PrepareRequest): Promise<CompareReply>;
  prepare(req: PrepareRequest): Promise<void>;
  upload(migrationId: string, rel: string, data: NodeJS.ReadableStream): Promise<void>;
  start(migrationId: string): Promise<StartReply>;
  finish(migrationId: string): Promise<IncomingStatus>;
  abort(migrationId: string): Promise<void>;
  status(migrationId: string): Promise<IncomingStatus>;
}
