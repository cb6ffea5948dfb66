// A disk's identity: the files QEMU opens for it, by (st_dev, st_ino), not by path. The same file
// under a hard link, a symlink, or as another image's backing file is then the same disk.
import { resolve } from "node:path";
import { walkBackingChain, fileKey, type BackingChainMember, type BackingChainPolicy, type FileIdentity } from "./chain.js";
import type { VhdFormat } from "./format.js";

export interface DiskIdentityMember {
  path: string;
  file: FileIdentity;
}

/**
 * The files behind one disk: `members[0]` is the image itself (the file QEMU writes), the rest its
 * backing chain in order (opened read-only).
 */
export interface DiskIdentity {
  path: string;
  members: readonly DiskIdentityMember[];
}

/** The identity of a chain walkBackingChain returned. */
export function identityOfChain(chain: readonly BackingChainMember[]): DiskIdentity {
  const top = chain[0];
  if (!top) throw new Error("identityOfChain: empty chain");
  return { path: top.path, members: chain.map((m) => ({ path: m.path, file: m.file })) };
}

/**
 * Walks the chain (with every check of walkBackingChain) and returns the identity.
 * Errors: those of walkBackingChain.
 */
export async function diskIdentity(path: string, format: VhdFormat | string | undefined, policy: BackingChainPolicy): Promise<DiskIdentity> {
  return identityOfChain(await walkBackingChain(resolve(path), format, policy));
}

/**
 * What a use of a disk does with its files.
 * - "attach": a VM's disk: the image is written, its backing files read.
 * - "read": every member is read (convert's source, a copy).
 * - "write": the image (members[0]) is written or replaced (resize, compact, merge).
 */
export type DiskAccess = "attach" | "read" | "write";

export type DiskConflictRelation =
  /** Both name the same image file (a hard link, a symlink, the same path). */
  | "same-file"
  /** The candidate's chain reads the owner's image: the candidate is an overlay on it. */
  | "candidate-backed-by-owner-disk"
  /** The owner's chain reads the candidate's image: the owner's disk is an overlay on it. */
  | "owner-backed-by-candidate";

export interface DiskConflict<O = string> {
  owner: O;
  /** The owner's disk (its path as the owner names it). */
  ownerDisk: string;
  relation: DiskConflictRelation;
  /** The shared file as the candidate reaches it, and as the owner does. */
  candidateFile: string;
  ownerFile: string;
  /** One sentence for the user. */
  message: string;
}

/**
 * Pure: the first owner whose disk conflicts with `candidate`, else undefined. A file may be read by any
 * number of users but written by one with nobody else reading it (QEMU's image locking works the
 * same way: a backing file is shared read-only, an image being written is not shared): so two disks
 * conflict when one's written image is among the other's files. Two overlays on one shared base do
 * not conflict. `access` is the candidate's: "attach" (writes its image, reads its chain),
 * "read" (reads all; conflicts only with an owner writing one of them), "write" (writes its image;
 * conflicts with any owner that opens it). Each owner's disk is taken as attached (written image).
 */
export function findDiskConflict<O = string>(
  candidate: DiskIdentity,
  others: Iterable<{ owner: O; disk: DiskIdentity }>,
  access: DiskAccess = "attach",
): DiskConflict<O> | undefined {
  const candTop = candidate.members[0];
  if (!candTop) return undefined;
  const candKeys = new Map(candidate.members.map((m) => [fileKey(m.file), m] as const));
  const candTopKey = fileKey(candTop.file);
  for (const { owner, disk } of others) {
    const ownerTop = disk.members[0];
    if (!ownerTop) continue;
    const ownerTopKey = fileKey(ownerTop.file);
    const who = typeof owner === "string" ? `VM "${owner}"` : String(owner);
    if (ownerTopKey === candTopKey) {
      const alias = ownerTop.path === candTop.path ? "" : ` (the same file as ${candTop.path})`;
      return {
        owner,
        ownerDisk: disk.path,
        relation: "same-file",
        candidateFile: candTop.path,
        ownerFile: ownerTop.path,
        message: `${candidate.path} is in use by ${who} as its disk ${ownerTop.path}${alias}`,
      };
    }
    // The owner writes its image: nobody else may read it, through a chain or otherwise.
    const read = candKeys.get(ownerTopKey);
    if (read) {
      return {
        owner,
        ownerDisk: disk.path,
        relation: "candidate-backed-by-owner-disk",
        candidateFile: read.path,
        ownerFile: ownerTop.path,
        message: `${candidate.path} reads ${read.path} as its backing file, but that file is ${who}'s disk ${ownerTop.path}, which the VM writes`,
      };
    }
    if (access === "read") continue;
    // The candidate writes its image: no owner may read it.
    const ownerMember = disk.members.find((m, i) => i > 0 && fileKey(m.file) === candTopKey);
    if (ownerMember) {
      return {
        owner,
        ownerDisk: disk.path,
        relation: "owner-backed-by-candidate",
        candidateFile: candTop.path,
        ownerFile: ownerMember.path,
        message: `${candidate.path} is the backing file ${ownerMember.path} of ${who}'s disk ${disk.path}; writing it would corrupt that disk`,
      };
    }
  }
  return undefined;
}
