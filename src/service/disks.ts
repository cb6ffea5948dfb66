import { stat } from "node:fs/promises";
import { resolve } from "node:path";
import { defaultApplianceCacheDir } from "../images/appliance/index.js";
import { walkBackingChain, type BackingChainPolicy } from "../images/chain.js";
import { findDiskConflict, identityOfChain, type DiskAccess, type DiskConflict, type DiskIdentity } from "../images/identity.js";
import { RuleError, type ConfigStore, type DiskFormat, type VmConfig } from "../model/index.js";
import { VmhostError } from "../util/errors.js";

/** A disk image a user names, checked: its path, its (explicit) format and its identity. */
export interface CheckedImage {
  path: string;
  format: DiskFormat;
  identity: DiskIdentity;
}

interface CacheEntry {
  key: string;
  identity: DiskIdentity;
}

/**
 * Disk images as vmhost trusts them (issue 9 C.10, C.11): formats are explicit (the user's or the
 * file extension's, checked against the content; never probed), backing chains may only lead
 * into what vmhost made (its home and the appliance cache), and one disk belongs to one VM by
 * identity (device and inode of every file of its chain), so a hard link or an overlay on
 * another VM's disk is refused at configuration time, naming the owner.
 */
export class DiskPolicy {
  private readonly cache = new Map<string, CacheEntry>();
  readonly policy: BackingChainPolicy;

  constructor(
    private readonly store: ConfigStore,
    home: string,
    applianceCache = defaultApplianceCacheDir(),
  ) {
    this.policy = { allowedDirs: [resolve(home), resolve(applianceCache)] };
  }

  /** Checks an image the user names: exists, is a regular file, explicit format agrees, chain stays inside. */
  async check(path: string, declared: DiskFormat | undefined, what = "disk image"): Promise<CheckedImage> {
    const abs = resolve(path);
    const st = await stat(abs).catch(() => undefined);
    if (!st) throw new VmhostError("missing-file", `${what} ${abs} does not exist`, 404);
    if (!st.isFile()) throw new VmhostError("not-a-regular-file", `${what} ${abs} is not a regular file`);
    const chain = await walkBackingChain(abs, declared, this.policy);
    const top = chain[0]!;
    return { path: abs, format: top.format, identity: identityOfChain(chain) };
  }

  /** The identity of a configured disk, cached by the file's (inode, size, mtime). */
  async identityOf(path: string, format: DiskFormat): Promise<DiskIdentity | undefined> {
    const st = await stat(path).catch(() => undefined);
    if (!st) return undefined;
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${format}`;
    const hit = this.cache.get(path);
    if (hit && hit.key === key) return hit.identity;
    try {
      const identity = identityOfChain(await walkBackingChain(path, format, { ...this.policy, allowedDirs: ["/"] }));
      this.cache.set(path, { key, identity });
      return identity;
    } catch {
      return undefined;
    }
  }

  /** The first other VM whose disk conflicts with `candidate` (same file, or one reads what the other writes). */
  async conflict(candidate: DiskIdentity, exceptVmId: string, access: DiskAccess = "attach"): Promise<DiskConflict<string> | undefined> {
    const others: { owner: string; disk: DiskIdentity }[] = [];
    for (const vm of await this.store.configs()) {
      if (vm.id === exceptVmId) continue;
      for (const d of vm.hardDisks) {
        const identity = await this.identityOf(d.path, d.format);
        if (identity) others.push({ owner: vm.name, disk: identity });
      }
    }
    return findDiskConflict(candidate, others, access);
  }

  /** Refuses `candidate` for VM `vm` when another VM owns it (rule disk-in-use, naming the owner). */
  async requireFree(candidate: CheckedImage, vm: Pick<VmConfig, "id">): Promise<void> {
    const c = await this.conflict(candidate.identity, vm.id);
    if (c) throw new RuleError("disk-in-use", c.message);
  }

  /**
   * Before a start: every disk's chain is walked again with the path QEMU will open (a file may
   * have been swapped since it was attached); refused with the reason.
   */
  async checkBeforeStart(vm: VmConfig): Promise<void> {
    for (const d of vm.hardDisks) await walkBackingChain(d.path, d.format, this.policy);
  }
}
