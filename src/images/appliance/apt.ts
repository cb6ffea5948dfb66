// What the appliance is made of: Debian packages resolved with apt (the kernel through its
// metapackage, whose versioned dependency changes as Debian updates), the host's installed
// packages whose files are copied in, and the .deb downloads themselves.
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, realpath, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { run } from "./run.js";
import { sharedLibraries } from "./ldd.js";
import { pathExists } from "../../util/fs.js";

export const KERNEL_METAPACKAGE = "linux-image-amd64";

/** Packages downloaded with `apt-get download` and unpacked with `dpkg-deb -x` (never installed). */
export const DOWNLOADED_PACKAGES = [
  "busybox-static",
  "shim-signed",
  "shim-helpers-amd64-signed",
  "grub-efi-amd64-signed",
  "syslinux-common",
] as const;

/** Host programs the build copies into the guest, by the paths Debian installs them at. */
export const HOST_PROGRAMS = {
  qemuGa: { candidates: ["/usr/sbin/qemu-ga"], debianPackage: "qemu-guest-agent" },
  efibootmgr: { candidates: ["/usr/bin/efibootmgr", "/bin/efibootmgr", "/usr/sbin/efibootmgr"], debianPackage: "efibootmgr" },
} as const;

/** Host tools the build runs whose versions shape the result, and where /etc/debian_version comes from. */
export const HOST_TOOL_PACKAGES = ["syslinux", "mtools", "gdisk", "fdisk", "base-files"] as const;

export interface ResolvedInputs {
  kernel: { metaVersion: string; package: string; version: string; release: string };
  /** package -> exact version for every downloaded .deb (the versioned kernel package included). */
  debs: Record<string, string>;
  /** installed host package -> version, for every host file or tool the build uses. */
  hostPackages: Record<string, string>;
  hostPrograms: { qemuGa: string; efibootmgr: string };
  /** Shared libraries of the host programs, as `ldd` names them (dynamic loader included). */
  hostLibraries: string[];
  debianVersion: string;
}

/** Parses `apt-cache policy A B ...` into package -> candidate version (absent when "(none)"). */
export function parseAptPolicy(out: string): Map<string, { installed?: string; candidate?: string }> {
  const result = new Map<string, { installed?: string; candidate?: string }>();
  let current: { installed?: string; candidate?: string } | undefined;
  for (const line of out.split("\n")) {
    const head = /^(\S+):$/.exec(line);
    if (head) {
      current = {};
      result.set(head[1]!.replace(/:amd64$/, ""), current);
      continue;
    }
    const kv = /^\s+(Installed|Candidate):\s+(\S+)/.exec(line);
    if (kv && current) {
      const v = kv[2] === "(none)" ? undefined : kv[2];
      if (v !== undefined) {
        if (kv[1] === "Installed") current.installed = v;
        else current.candidate = v;
      }
    }
  }
  return result;
}

/** The versioned kernel package a `linux-image-amd64` stanza depends on. */
export function parseKernelDependency(showOutput: string): { package: string; version?: string } {
  const depends = /^Depends:\s*(.*)$/m.exec(showOutput)?.[1];
  if (!depends) throw new Error(`${KERNEL_METAPACKAGE} has no Depends field`);
  for (const alt of depends.split(/[,|]/).map((s) => s.trim())) {
    const m = /^(linux-image-[0-9][^\s(]*)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?/.exec(alt);
    if (m) return m[2] ? { package: m[1]!, version: m[2] } : { package: m[1]! };
  }
  throw new Error(`${KERNEL_METAPACKAGE} does not depend on a versioned linux-image package: ${depends}`);
}

async function candidates(pkgs: readonly string[]): Promise<Map<string, string>> {
  const { stdout } = await run("apt-cache", ["policy", ...pkgs]);
  const policy = parseAptPolicy(stdout);
  const out = new Map<string, string>();
  const missing: string[] = [];
  for (const p of pkgs) {
    const c = policy.get(p)?.candidate;
    if (c) out.set(p, c);
    else missing.push(p);
  }
  if (missing.length)
    throw new Error(`apt has no candidate for ${missing.join(", ")}; run "apt-get update" (bookworm main must be in the sources)`);
  return out;
}


/** Spellings of a path dpkg may have recorded on a merged-/usr system. */
async function pathSpellings(p: string): Promise<string[]> {
  const out = [p];
  const toggled = p.startsWith("/usr/") ? p.slice(4) : "/usr" + p;
  out.push(toggled);
  try {
    const real = await realpath(p);
    out.push(real, real.startsWith("/usr/") ? real.slice(4) : "/usr" + real);
  } catch {
    // dangling or absent: the other spellings may still be known to dpkg
  }
  return [...new Set(out)];
}

/** Maps each host file to the installed Debian package that ships it (dpkg-query -S). */
export async function owningPackages(paths: readonly string[]): Promise<Map<string, string>> {
  const spellings = new Map<string, string[]>();
  for (const p of paths) spellings.set(p, await pathSpellings(p));
  const all = [...new Set([...spellings.values()].flat())];
  const { stdout } = await run("dpkg-query", ["-S", ...all], { okCodes: [0, 1] });
  const owner = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    if (line.startsWith("diversion ")) continue;
    const m = /^(.+?): (\/.*)$/.exec(line);
    if (!m) continue;
    const pkg = m[1]!.split(",")[0]!.trim().replace(/:[a-z0-9]+$/, "");
    owner.set(m[2]!, pkg);
  }
  const result = new Map<string, string>();
  for (const [p, sp] of spellings) {
    const pkg = sp.map((s) => owner.get(s)).find((x) => x !== undefined);
    if (!pkg) throw new Error(`no installed Debian package ships ${p} (dpkg-query -S)`);
    result.set(p, pkg);
  }
  return result;
}

/** Installed versions (dpkg-query -W); throws naming the packages that are not installed. */
export async function installedVersions(pkgs: readonly string[]): Promise<Map<string, string>> {
  const { stdout } = await run("dpkg-query", ["-W", "-f=${Package}\t${Version}\t${db:Status-Status}\n", ...pkgs], { okCodes: [0, 1] });
  const out = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const [p, v, st] = line.split("\t");
    if (p && v && st === "installed") out.set(p.replace(/:[a-z0-9]+$/, ""), v);
  }
  const missing = pkgs.filter((p) => !out.has(p));
  if (missing.length) throw new Error(`host packages not installed: ${missing.join(" ")} (apt-get install ${missing.join(" ")})`);
  return out;
}

export async function resolveInputs(): Promise<ResolvedInputs> {
  const hostPrograms = {} as { qemuGa: string; efibootmgr: string };
  const missingPkgs: string[] = [];
  for (const [key, spec] of Object.entries(HOST_PROGRAMS) as [keyof typeof HOST_PROGRAMS, (typeof HOST_PROGRAMS)[keyof typeof HOST_PROGRAMS]][]) {
    let found: string | undefined;
    for (const c of spec.candidates) if (await pathExists(c)) { found = c; break; }
    if (found) hostPrograms[key] = found;
    else missingPkgs.push(spec.debianPackage);
  }
  if (missingPkgs.length) throw new Error(`host packages not installed: ${missingPkgs.join(" ")} (apt-get install ${missingPkgs.join(" ")})`);

  const cand = await candidates([KERNEL_METAPACKAGE, ...DOWNLOADED_PACKAGES]);
  const metaVersion = cand.get(KERNEL_METAPACKAGE)!;
  const show = await run("apt-cache", ["show", `${KERNEL_METAPACKAGE}=${metaVersion}`]);
  const dep = parseKernelDependency(show.stdout);
  const kernelVersion = dep.version ?? (await candidates([dep.package])).get(dep.package)!;
  const release = dep.package.replace(/^linux-image-/, "");

  const hostLibraries = await sharedLibraries([hostPrograms.qemuGa, hostPrograms.efibootmgr]);
  const owners = await owningPackages([hostPrograms.qemuGa, hostPrograms.efibootmgr, ...hostLibraries]);
  const hostPkgNames = [...new Set([...owners.values(), ...HOST_TOOL_PACKAGES])].sort();
  const hostVersions = await installedVersions(hostPkgNames);

  const debs: Record<string, string> = { [dep.package]: kernelVersion };
  for (const p of DOWNLOADED_PACKAGES) debs[p] = cand.get(p)!;
  const debianVersion = (await readFile("/etc/debian_version", "utf8")).trim();
  return {
    kernel: { metaVersion, package: dep.package, version: kernelVersion, release },
    debs: sortRecord(debs),
    hostPackages: sortRecord(Object.fromEntries(hostVersions)),
    hostPrograms,
    hostLibraries,
    debianVersion,
  };
}

export function sortRecord(r: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * A cheap fingerprint of everything apt and dpkg answer from: the package lists (they change
 * on apt-get update), dpkg's status file (changes on install/upgrade) and apt's configuration.
 * When it is unchanged, the resolution above would give the same answer, so it can be reused.
 */
export async function aptStateStamp(): Promise<string> {
  const h = createHash("sha256");
  const statInto = async (p: string): Promise<void> => {
    try {
      const s = await stat(p);
      h.update(`${p}\t${s.size}\t${s.mtimeMs}\n`);
    } catch {
      h.update(`${p}\tabsent\n`);
    }
  };
  const listDir = async (d: string): Promise<string[]> => {
    try {
      return (await readdir(d)).sort().map((f) => join(d, f));
    } catch {
      return [];
    }
  };
  for (const f of await listDir("/var/lib/apt/lists")) if (!/\/(lock|partial|auxfiles)$/.test(f)) await statInto(f);
  for (const f of ["/var/lib/dpkg/status", "/etc/apt/sources.list", "/etc/apt/preferences", "/etc/debian_version"]) await statInto(f);
  for (const d of ["/etc/apt/sources.list.d", "/etc/apt/preferences.d", "/etc/apt/apt.conf.d"]) for (const f of await listDir(d)) await statInto(f);
  return h.digest("hex");
}

function debFileName(pkg: string, version: string): string {
  return `${pkg}_${version.replace(/:/g, "%3a")}.deb`;
}

/**
 * Ensures each package=version is in `debsDir` (downloaded by apt, which checks the archive's
 * hashes) and returns package -> .deb path. Each download lands in a private directory and is
 * renamed into place, so a .deb in `debsDir` is always complete.
 */
export async function fetchDebs(debsDir: string, wanted: Record<string, string>, log: (l: string) => void): Promise<Record<string, string>> {
  await mkdir(debsDir, { recursive: true });
  const result: Record<string, string> = {};
  const toFetch: [string, string][] = [];
  for (const [pkg, ver] of Object.entries(wanted)) {
    const path = join(debsDir, debFileName(pkg, ver));
    result[pkg] = path;
    if (!(await pathExists(path))) toFetch.push([pkg, ver]);
  }
  if (toFetch.length === 0) return result;
  log(`downloading ${toFetch.map(([p, v]) => `${p}=${v}`).join(" ")}`);
  const tmp = await mkdtemp(join(debsDir, ".download-"));
  try {
    const sandbox = process.getuid?.() === 0 ? ["-o", "APT::Sandbox::User=root"] : [];
    await run("apt-get", ["download", "-q", ...sandbox, ...toFetch.map(([p, v]) => `${p}=${v}`)], { cwd: tmp });
    const files = (await readdir(tmp)).filter((f) => f.endsWith(".deb"));
    for (const [pkg, ver] of toFetch) {
      const f = files.find((x) => x.startsWith(`${pkg}_`));
      if (!f) throw new Error(`apt-get download did not produce ${pkg}=${ver}`);
      const fields = (await run("dpkg-deb", ["-f", join(tmp, f), "Package", "Version"])).stdout;
      if (!fields.includes(`Package: ${pkg}\n`) || !fields.includes(`Version: ${ver}\n`))
        throw new Error(`downloaded ${f} is not ${pkg}=${ver}: ${fields}`);
      await rename(join(tmp, f), result[pkg]!);
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return result;
}

export async function extractDeb(deb: string, dest: string): Promise<void> {
  await mkdir(dest, { recursive: true });
  await run("dpkg-deb", ["-x", deb, dest]);
}

/** Removes cached .debs that are not in `keep` (old kernels are 70 MB each). */
export async function pruneDebs(debsDir: string, keep: Record<string, string>): Promise<void> {
  const keepNames = new Set(Object.entries(keep).map(([p, v]) => debFileName(p, v)));
  for (const f of await readdir(debsDir).catch(() => [] as string[])) {
    if (f.endsWith(".deb") && !keepNames.has(f)) await rm(join(debsDir, f), { force: true });
  }
}
