// The built-in appliance: a small real Linux guest made from Debian packages, with a Gen1
// (MBR + SYSLINUX) and a Gen2 (GPT + ESP + signed shim/GRUB/kernel) boot disk. Built once per
// set of inputs into a cache directory and reused.
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, open, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { z } from "zod";
import {
  KERNEL_METAPACKAGE,
  type ResolvedInputs,
  aptStateStamp,
  extractDeb,
  fetchDebs,
  pruneDebs,
  resolveInputs,
  sortRecord,
} from "./apt.js";
import { buildGen1Disk, buildGen2Disk } from "./disks.js";
import {
  ETC_FILES,
  KERNEL_CMDLINE,
  bootCsv,
  forcedPowerScript,
  grubCfg,
  initScript,
  osRelease,
  powerButtonScript,
  shutdownScript,
  syslinuxCfg,
  udhcpcScript,
} from "./guest-files.js";
import { APPLIANCE_MODULES, buildInitramfs } from "./initramfs.js";
import { acquireLock } from "./lock.js";
import { syncDir, writeFileAtomic } from "../../util/atomic.js";

/**
 * Bump when the build changes in a way the hashed inputs do not show (disk layout, archive
 * contents, tools' arguments). Text files of the guest are hashed by content already.
 */
export const BUILDER_VERSION = 3;

export interface ApplianceManifest {
  formatVersion: 1;
  /** Short hash of all inputs (package versions + builder version); changes when inputs change. */
  id: string;
  builtAt: string;
  kernel: { metapackage: "linux-image-amd64"; package: string; version: string; release: string };
  /** Every Debian package used -> version (downloaded ones and the host's). */
  packages: Record<string, string>;
  cmdline: string;
  gen1Disk: string;
  gen2Disk: string;
  diskFormat: "raw";
  /** The kernel and initramfs inside the appliance dir too, for direct kernel boot. */
  vmlinuz: string;
  initrd: string;
}

export interface Appliance {
  dir: string;
  manifest: ApplianceManifest;
  /** Absolute paths. The cached images are shared: copy them before booting read-write. */
  gen1Disk: string;
  gen2Disk: string;
}

const fileName = z.string().regex(/^[A-Za-z0-9._-]+$/);
const ManifestSchema = z.object({
  formatVersion: z.literal(1),
  id: z.string().regex(/^[0-9a-f]{12}$/),
  builtAt: z.string(),
  kernel: z.object({ metapackage: z.literal(KERNEL_METAPACKAGE), package: z.string(), version: z.string(), release: z.string() }),
  packages: z.record(z.string()),
  cmdline: z.string(),
  gen1Disk: fileName,
  gen2Disk: fileName,
  diskFormat: z.literal("raw"),
  vmlinuz: fileName,
  initrd: fileName,
});

const InputsCacheSchema = z.object({
  builderVersion: z.number(),
  stamp: z.string(),
  resolvedAt: z.string(),
  inputs: z.object({
    kernel: z.object({ metaVersion: z.string(), package: z.string(), version: z.string(), release: z.string() }),
    debs: z.record(z.string()),
    hostPackages: z.record(z.string()),
    hostPrograms: z.object({ qemuGa: z.string(), efibootmgr: z.string() }),
    hostLibraries: z.array(z.string()),
    debianVersion: z.string(),
  }),
});

const INPUTS_FILE = "inputs.json";
const LOCK_FILE = ".build.lock";
const GEN1 = "gen1.raw";
const GEN2 = "gen2.raw";
const VMLINUZ = "vmlinuz";
const INITRD = "initrd.img";
const ID_DIR = /^[0-9a-f]{12}$/;

export function defaultApplianceCacheDir(): string {
  const env = process.env.VMHOST_APPLIANCE_CACHE;
  if (env) return resolve(env);
  if (process.getuid?.() === 0) return "/var/cache/vmhost/appliance";
  return join(homedir(), ".cache", "vmhost", "appliance");
}

/** Every Debian package the appliance is made of or built with -> version. */
export function manifestPackages(inputs: ResolvedInputs): Record<string, string> {
  return sortRecord({ [KERNEL_METAPACKAGE]: inputs.kernel.metaVersion, ...inputs.hostPackages, ...inputs.debs });
}

/** The appliance id: a short hash of the builder version, the package versions and the guest's files. */
export function applianceId(inputs: ResolvedInputs): string {
  const guestFiles = {
    init: initScript({ kernelRelease: inputs.kernel.release }),
    shutdown: shutdownScript(),
    power: (["poweroff", "reboot", "halt"] as const).map(forcedPowerScript),
    button: powerButtonScript(),
    udhcpc: udhcpcScript(),
    osRelease: osRelease({ debianVersion: inputs.debianVersion, kernelRelease: inputs.kernel.release }),
    etc: ETC_FILES,
    syslinux: syslinuxCfg(KERNEL_CMDLINE),
    grub: grubCfg(KERNEL_CMDLINE),
    csv: bootCsv().toString("base64"),
  };
  const material = JSON.stringify({
    builderVersion: BUILDER_VERSION,
    packages: manifestPackages(inputs),
    kernel: inputs.kernel,
    hostPrograms: inputs.hostPrograms,
    hostLibraries: inputs.hostLibraries,
    debianVersion: inputs.debianVersion,
    modules: APPLIANCE_MODULES,
    cmdline: KERNEL_CMDLINE,
    guestFiles,
  });
  return createHash("sha256").update(material).digest("hex").slice(0, 12);
}

async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * The resolved inputs, reused while apt's and dpkg's state is unchanged (their answers cannot
 * change then), so the cached path costs a few stat calls instead of apt-cache runs.
 */
async function currentInputs(cacheDir: string, log: (l: string) => void): Promise<ResolvedInputs> {
  const stamp = await aptStateStamp();
  const path = join(cacheDir, INPUTS_FILE);
  try {
    const cached = InputsCacheSchema.parse(JSON.parse(await readFile(path, "utf8")));
    if (cached.stamp === stamp && cached.builderVersion === BUILDER_VERSION) return cached.inputs;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") log(`ignoring damaged ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  const t0 = Date.now();
  const inputs = await resolveInputs();
  log(`resolved ${KERNEL_METAPACKAGE} ${inputs.kernel.metaVersion} -> ${inputs.kernel.package} ${inputs.kernel.version} (${Date.now() - t0} ms)`);
  await writeFileAtomic(path, JSON.stringify({ builderVersion: BUILDER_VERSION, stamp, resolvedAt: new Date().toISOString(), inputs }, null, 2) + "\n");
  return inputs;
}

/** The appliance in `dir` if it is complete and is build `id`; undefined otherwise. */
async function loadAppliance(dir: string, id: string, log: (l: string) => void): Promise<Appliance | undefined> {
  let raw: string;
  try {
    raw = await readFile(join(dir, "manifest.json"), "utf8");
  } catch {
    return undefined;
  }
  let manifest: ApplianceManifest;
  try {
    manifest = ManifestSchema.parse(JSON.parse(raw));
  } catch (e) {
    log(`appliance manifest ${join(dir, "manifest.json")} is damaged: ${(e as Error).message.split("\n")[0]}`);
    return undefined;
  }
  if (manifest.id !== id) return undefined;
  for (const f of [manifest.gen1Disk, manifest.gen2Disk, manifest.vmlinuz, manifest.initrd]) {
    try {
      if ((await stat(join(dir, f))).size === 0) throw new Error("empty");
    } catch {
      log(`appliance ${dir} is missing ${f}; rebuilding`);
      return undefined;
    }
  }
  return { dir, manifest, gen1Disk: join(dir, manifest.gen1Disk), gen2Disk: join(dir, manifest.gen2Disk) };
}

const inflight = new Map<string, Promise<Appliance>>();

/**
 * Returns the cached appliance when it is complete and matches the current inputs, else builds
 * it. Concurrent callers share one build: in-process through a promise, across processes
 * through a lock file; the build is renamed into place in one step, so a directory named by
 * an id is always complete.
 */
export async function ensureAppliance(opts: { cacheDir?: string; force?: boolean; log?: (line: string) => void } = {}): Promise<Appliance> {
  const cacheDir = resolve(opts.cacheDir ?? defaultApplianceCacheDir());
  const key = `${cacheDir}\0${opts.force ? "force" : ""}`;
  const running = inflight.get(key);
  if (running) return running;
  const p = ensureImpl(cacheDir, opts.force ?? false, opts.log ?? (() => undefined)).finally(() => inflight.delete(key));
  inflight.set(key, p);
  return p;
}

async function ensureImpl(cacheDir: string, force: boolean, log: (l: string) => void): Promise<Appliance> {
  await mkdir(cacheDir, { recursive: true });
  const inputs = await currentInputs(cacheDir, log);
  const id = applianceId(inputs);
  const dir = join(cacheDir, id);
  if (!force) {
    const cached = await loadAppliance(dir, id, log);
    if (cached) return cached;
  }
  const release = await acquireLock(join(cacheDir, LOCK_FILE), { log });
  try {
    if (!force) {
      const built = await loadAppliance(dir, id, log); // by another process while we waited
      if (built) return built;
    }
    return await build(cacheDir, id, inputs, log);
  } finally {
    await release();
  }
}

async function removeStaleTemporaries(cacheDir: string, keep: string): Promise<void> {
  // Only called under the lock: any other build or download directory belongs to a dead build.
  for (const f of await readdir(cacheDir)) {
    if ((f.startsWith(".build-") || f.startsWith(".trash-")) && join(cacheDir, f) !== keep) await rm(join(cacheDir, f), { recursive: true, force: true });
  }
  for (const f of await readdir(join(cacheDir, "debs")).catch(() => [] as string[])) {
    if (f.startsWith(".download-")) await rm(join(cacheDir, "debs", f), { recursive: true, force: true });
  }
}

/** Keeps the new build and the most recent previous one (a caller may still be copying it). */
async function pruneOldBuilds(cacheDir: string, current: string): Promise<void> {
  const others: { name: string; mtime: number }[] = [];
  for (const f of await readdir(cacheDir)) {
    if (!ID_DIR.test(f) || f === current) continue;
    others.push({ name: f, mtime: (await stat(join(cacheDir, f))).mtimeMs });
  }
  others.sort((a, b) => b.mtime - a.mtime);
  for (const o of others.slice(1)) await rm(join(cacheDir, o.name), { recursive: true, force: true });
}

async function build(cacheDir: string, id: string, inputs: ResolvedInputs, log: (l: string) => void): Promise<Appliance> {
  const t0 = Date.now();
  const step = (what: string) => log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${what}`);
  const work = await mkdtemp(join(cacheDir, `.build-${id}-`));
  try {
    await removeStaleTemporaries(cacheDir, work);
    step(`building appliance ${id} in ${work}`);
    const debs = await fetchDebs(join(cacheDir, "debs"), inputs.debs, log);
    const x = join(work, "x");
    for (const [pkg, deb] of Object.entries(debs)) await extractDeb(deb, join(x, pkg));
    step("unpacked packages");

    const kernelRoot = join(x, inputs.kernel.package);
    const release = inputs.kernel.release;
    const vmlinuzSrc = join(kernelRoot, "boot", `vmlinuz-${release}`);
    await stat(vmlinuzSrc).catch(() => {
      throw new Error(`${inputs.kernel.package} has no /boot/vmlinuz-${release}`);
    });
    await stat(join(kernelRoot, "lib/modules", release)).catch(() => {
      throw new Error(`${inputs.kernel.package} has no /lib/modules/${release}`);
    });

    const out = join(work, "out");
    await mkdir(out);
    const initramfs = await buildInitramfs({
      busyboxRoot: join(x, "busybox-static"),
      kernelRoot,
      kernelRelease: release,
      hostPrograms: inputs.hostPrograms,
      hostLibraries: inputs.hostLibraries,
      debianVersion: inputs.debianVersion,
    });
    step(
      `initramfs: ${initramfs.fileCount} entries, ${(initramfs.image.length / 1048576).toFixed(1)} MiB, modules: ${initramfs.modules.map((m) => m.name).join(" ")}` +
        (initramfs.builtin.length ? ` (built in: ${initramfs.builtin.join(" ")})` : ""),
    );
    const vmlinuz = join(out, VMLINUZ);
    const initrd = join(out, INITRD);
    await copyFile(vmlinuzSrc, vmlinuz);
    await writeFile(initrd, initramfs.image);

    const bootFiles = { vmlinuz, initrd, cmdline: KERNEL_CMDLINE };
    await buildGen1Disk(join(out, GEN1), bootFiles, { mbrBin: join(x, "syslinux-common/usr/lib/syslinux/mbr/mbr.bin"), workDir: work });
    step("gen1 disk (MBR + SYSLINUX) written");
    await buildGen2Disk(
      join(out, GEN2),
      bootFiles,
      {
        shim: join(x, "shim-signed/usr/lib/shim/shimx64.efi.signed"),
        grub: join(x, "grub-efi-amd64-signed/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"),
        mokManager: join(x, "shim-helpers-amd64-signed/usr/lib/shim/mmx64.efi.signed"),
      },
      { workDir: work },
    );
    step("gen2 disk (GPT + ESP + shim/GRUB) written");

    const manifest: ApplianceManifest = {
      formatVersion: 1,
      id,
      builtAt: new Date().toISOString(),
      kernel: { metapackage: KERNEL_METAPACKAGE, package: inputs.kernel.package, version: inputs.kernel.version, release },
      packages: manifestPackages(inputs),
      cmdline: KERNEL_CMDLINE,
      gen1Disk: GEN1,
      gen2Disk: GEN2,
      diskFormat: "raw",
      vmlinuz: VMLINUZ,
      initrd: INITRD,
    };
    await writeFile(join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
    for (const f of [GEN1, GEN2, VMLINUZ, INITRD, "manifest.json"]) await fsyncFile(join(out, f));
    await syncDir(out);

    const dir = join(cacheDir, id);
    // A forced rebuild or a damaged build: move the old directory out of the way first.
    const trash = join(cacheDir, `.trash-${id}-${process.pid}`);
    await rename(dir, trash).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "ENOENT") throw e;
    });
    await rename(out, dir);
    await syncDir(cacheDir);
    await rm(trash, { recursive: true, force: true });
    await pruneOldBuilds(cacheDir, id);
    await pruneDebs(join(cacheDir, "debs"), inputs.debs);
    step(`appliance ${id} ready in ${dir}`);
    const done = await loadAppliance(dir, id, log);
    if (!done) throw new Error(`appliance ${dir} failed its completeness check right after the build`);
    return done;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
