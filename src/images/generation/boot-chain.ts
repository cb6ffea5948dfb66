// Debian's signed UEFI boot chain (shim, GRUB, MokManager) from the very packages the
// built-in appliance's Gen2 disk boots with, taken from the appliance's .deb cache.
import { join, dirname } from "node:path";
import { ensureAppliance } from "../appliance/index.js";
import { extractDeb, fetchDebs } from "../appliance/apt.js";
import type { Gen2BootChain } from "../appliance/disks.js";

export type { Gen2BootChain } from "../appliance/disks.js";

/** Which Debian package and file each part of the chain comes from (paths inside the .deb). */
export const SIGNED_CHAIN_SOURCES = {
  shim: { package: "shim-signed", path: "usr/lib/shim/shimx64.efi.signed" },
  grub: { package: "grub-efi-amd64-signed", path: "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" },
  mokManager: { package: "shim-helpers-amd64-signed", path: "usr/lib/shim/mmx64.efi.signed" },
} as const;

/**
 * Unpacks Debian's signed shim, GRUB and MokManager into `workDir` and returns their paths.
 * The versions are the appliance manifest's (ensureAppliance builds the appliance when it
 * is missing, which takes minutes); the .debs come from its cache or apt, which checks the
 * archive's hashes.
 */
export async function debianSignedBootChain(workDir: string, opts: { cacheDir?: string; log?: (l: string) => void } = {}): Promise<Gen2BootChain> {
  const log = opts.log ?? (() => undefined);
  const app = await ensureAppliance({ ...(opts.cacheDir ? { cacheDir: opts.cacheDir } : {}), log });
  const wanted: Record<string, string> = {};
  for (const s of Object.values(SIGNED_CHAIN_SOURCES)) {
    const v = app.manifest.packages[s.package];
    if (!v) throw new Error(`the appliance manifest ${join(app.dir, "manifest.json")} lists no ${s.package}; rebuild it (vmhost appliance build)`);
    wanted[s.package] = v;
  }
  const debs = await fetchDebs(join(dirname(app.dir), "debs"), wanted, log);
  const x = join(workDir, "signed-chain");
  for (const deb of Object.values(debs)) await extractDeb(deb, x);
  return {
    shim: join(x, SIGNED_CHAIN_SOURCES.shim.path),
    grub: join(x, SIGNED_CHAIN_SOURCES.grub.path),
    mokManager: join(x, SIGNED_CHAIN_SOURCES.mokManager.path),
  };
}
