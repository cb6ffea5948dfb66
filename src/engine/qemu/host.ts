import { execFile } from "node:child_process";
import { constants } from "node:fs";
import { access, stat } from "node:fs/promises";
import { delimiter, isAbsolute, join, resolve } from "node:path";
import { promisify } from "node:util";
import { VmhostError } from "../../util/errors.js";

const execFileP = promisify(execFile);

export interface FirmwareFiles {
  code: string;
  vars: string;
}

export interface HostFacts {
  qemuBinary: string;
  qemuVersion: string;
  qemuPackage?: string;
  qemuImg: string;
  ovmf: {
    plain4m: FirmwareFiles;
    /** OVMF_CODE_4M.ms.fd + OVMF_VARS_4M.ms.fd: Secure Boot code with Microsoft keys enrolled. */
    secure4m: FirmwareFiles;
    snakeoil4m?: FirmwareFiles;
    secbootCode4m?: string;
    /** Debian package version of ovmf. */
    version?: string;
  };
  seabios: { bios: string; version?: string };
  ipxeRomDir?: string;
  kvmDevice: boolean;
}

/** Everything in HostFacts that is found without spawning a process. */
export interface HostPaths {
  qemuBinary: string;
  qemuImg: string;
  ovmf: Omit<HostFacts["ovmf"], "version">;
  seabios: { bios: string };
  ipxeRomDir?: string;
  kvmDevice: boolean;
}

export interface HostVersions {
  qemuVersion: string;
  qemuPackage?: string;
  ovmfVersion?: string;
  seabiosVersion?: string;
}

/** Where Debian puts things; overridable for tests of the missing-file errors. */
export interface HostDirs {
  ovmfDir: string;
  seabiosDir: string;
  ipxeDir: string;
  kvmDevice: string;
}

export const DEBIAN_DIRS: Readonly<HostDirs> = {
  ovmfDir: "/usr/share/OVMF",
  seabiosDir: "/usr/share/seabios",
  ipxeDir: "/usr/lib/ipxe/qemu",
  kvmDevice: "/dev/kvm",
};

type Env = Readonly<Record<string, string | undefined>>;

async function isFile(path: string, mode: number): Promise<boolean> {
  try {
    const st = await stat(path);
    if (!st.isFile()) return false;
    await access(path, mode);
    return true;
  } catch {
    return false;
  }
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Resolves a program from an env override or PATH without spawning anything.
 * `pkg` names the Debian package in the error.
 */
async function findProgram(envName: string, defaultName: string, pkg: string, env: Env): Promise<string> {
  const override = env[envName];
  const name = override && override.length > 0 ? override : defaultName;
  if (name.includes("/")) {
    const abs = resolve(name);
    if (await isFile(abs, constants.X_OK)) return abs;
    throw new VmhostError("host-missing", `${envName}=${name}: not an executable file`, 500);
  }
  for (const dir of (env["PATH"] ?? "").split(delimiter)) {
    if (!dir || !isAbsolute(dir)) continue;
    const candidate = join(dir, name);
    if (await isFile(candidate, constants.X_OK)) return candidate;
  }
  const hint = override ? `${envName}=${name}` : `install the Debian package ${pkg}, or set ${envName}`;
  throw new VmhostError("host-missing", `${name} not found in PATH (${hint})`, 500);
}

export async function findQemuBinary(env: Env = process.env): Promise<string> {
  return findProgram("VMHOST_QEMU", "qemu-system-x86_64", "qemu-system-x86", env);
}

export async function findQemuImg(env: Env = process.env): Promise<string> {
  return findProgram("VMHOST_QEMU_IMG", "qemu-img", "qemu-utils", env);
}

/**
 * Not memoized: the building block of hostPaths(), exposed so tests can point it at other dirs.
 * Everything is looked up at once, and everything missing is reported together in one
 * VmhostError("host-missing", 500) whose message lists, in this fixed order and joined by "; ":
 * the QEMU binary, qemu-img, the OVMF files, the SeaBIOS file. The outcome never depends on
 * which lookup finishes first.
 */
export async function resolveHostPaths(env: Env = process.env, dirs: Readonly<HostDirs> = DEBIAN_DIRS): Promise<HostPaths> {
  const ovmf = (name: string): string => join(dirs.ovmfDir, name);
  const required = {
    plainCode: ovmf("OVMF_CODE_4M.fd"),
    plainVars: ovmf("OVMF_VARS_4M.fd"),
    msCode: ovmf("OVMF_CODE_4M.ms.fd"),
    msVars: ovmf("OVMF_VARS_4M.ms.fd"),
  };
  const bios = join(dirs.seabiosDir, "bios-256k.bin");
  const snakeoil = { code: ovmf("OVMF_CODE_4M.snakeoil.fd"), vars: ovmf("OVMF_VARS_4M.snakeoil.fd") };
  const secboot = ovmf("OVMF_CODE_4M.secboot.fd");

  const [programs, reqOk, biosOk, snakeCodeOk, snakeVarsOk, secbootOk, ipxeOk, kvmDevice] = await Promise.all([
    // Settled, not raced: both answers are awaited, so both absences can be named.
    Promise.allSettled([findQemuBinary(env), findQemuImg(env)]),
    Promise.all(Object.values(required).map((p) => isFile(p, constants.R_OK))),
    isFile(bios, constants.R_OK),
    isFile(snakeoil.code, constants.R_OK),
    isFile(snakeoil.vars, constants.R_OK),
    isFile(secboot, constants.R_OK),
    isDir(dirs.ipxeDir),
    stat(dirs.kvmDevice).then((st) => st.isCharacterDevice(), () => false),
  ]);

  const missing: string[] = [];
  for (const p of programs) {
    if (p.status === "fulfilled") continue;
    if (!(p.reason instanceof VmhostError)) throw p.reason;
    missing.push(p.reason.message);
  }
  const missingOvmf = Object.values(required).filter((_, i) => !reqOk[i]);
  if (missingOvmf.length > 0) missing.push(`UEFI firmware missing: ${missingOvmf.join(", ")} (install the Debian package ovmf)`);
  if (!biosOk) missing.push(`BIOS firmware missing: ${bios} (install the Debian package seabios)`);
  const [qemu, img] = programs;
  if (missing.length > 0 || qemu.status !== "fulfilled" || img.status !== "fulfilled") throw new VmhostError("host-missing", missing.join("; "), 500);
  const qemuBinary = qemu.value;
  const qemuImg = img.value;

  const facts: HostPaths = {
    qemuBinary,
    qemuImg,
    ovmf: {
      plain4m: { code: required.plainCode, vars: required.plainVars },
      secure4m: { code: required.msCode, vars: required.msVars },
    },
    seabios: { bios },
    kvmDevice,
  };
  if (snakeCodeOk && snakeVarsOk) facts.ovmf.snakeoil4m = snakeoil;
  if (secbootOk) facts.ovmf.secbootCode4m = secboot;
  if (ipxeOk) facts.ipxeRomDir = dirs.ipxeDir;
  return facts;
}

/** "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" -> version and package. */
export function parseQemuVersion(text: string): { version: string; package?: string } | undefined {
  const m = /version\s+(\d+\.\d+(?:\.\d+)?)(?:\s*\(([^)]*)\))?/.exec(text);
  if (!m || !m[1]) return undefined;
  return m[2] ? { version: m[1], package: m[2] } : { version: m[1] };
}

const qemuVersionMemo = new Map<string, Promise<{ version: string; package?: string }>>();

/** `<binary> --version`, memoized per binary for the life of the process. */
export function qemuVersionOf(binary: string): Promise<{ version: string; package?: string }> {
  let p = qemuVersionMemo.get(binary);
  if (!p) {
    p = execFileP(binary, ["--version"], { timeout: 10_000 }).then(
      ({ stdout }) => {
        const v = parseQemuVersion(stdout);
        if (!v) throw new VmhostError("host-qemu", `${binary} --version printed no version: ${stdout.trim()}`, 500);
        return v;
      },
      (err: unknown) => {
        throw new VmhostError("host-qemu", `${binary} --version failed: ${errText(err)}`, 500);
      },
    );
    p.catch(() => qemuVersionMemo.delete(binary));
    qemuVersionMemo.set(binary, p);
  }
  return p;
}

/** Debian package versions; absent packages (or no dpkg at all) just yield no entry. */
export async function debianPackageVersions(pkgs: readonly string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  let stdout = "";
  try {
    ({ stdout } = await execFileP("dpkg-query", ["-W", "-f", "${Package}\t${Version}\n", ...pkgs], { timeout: 10_000 }));
  } catch (err) {
    // dpkg-query exits 1 when one package is unknown but still prints the others.
    const o = (err as { stdout?: unknown }).stdout;
    stdout = typeof o === "string" ? o : "";
  }
  for (const line of stdout.split("\n")) {
    const [name, version] = line.split("\t");
    if (name && version) out.set(name, version);
  }
  return out;
}

function errText(err: unknown): string {
  const e = err as { stderr?: unknown; message?: unknown };
  if (typeof e.stderr === "string" && e.stderr.trim()) return e.stderr.trim();
  return typeof e.message === "string" ? e.message : String(err);
}

// Memoized per process, keyed by the env values that change the answer.
let pathsMemo: { key: string; value: Promise<HostPaths> } | undefined;
let versionsMemo: { key: string; value: Promise<HostVersions> } | undefined;

function envKey(): string {
  return JSON.stringify([process.env["VMHOST_QEMU"], process.env["VMHOST_QEMU_IMG"], process.env["PATH"]]);
}

/** Paths and device presence only; no processes are spawned. */
export function hostPaths(): Promise<HostPaths> {
  const key = envKey();
  if (!pathsMemo || pathsMemo.key !== key) {
    const value = resolveHostPaths();
    // A failure is not cached: installing the missing package must not need a daemon restart.
    value.catch(() => {
      if (pathsMemo?.value === value) pathsMemo = undefined;
    });
    pathsMemo = { key, value };
  }
  return pathsMemo.value;
}

/** Versions of QEMU, OVMF and SeaBIOS: spawns `qemu-system-x86_64 --version` and dpkg-query once per process. */
export function hostVersions(): Promise<HostVersions> {
  const key = envKey();
  if (!versionsMemo || versionsMemo.key !== key) {
    const value = (async (): Promise<HostVersions> => {
      const qemu = await findQemuBinary();
      const [q, pkgs] = await Promise.all([qemuVersionOf(qemu), debianPackageVersions(["ovmf", "seabios"])]);
      const v: HostVersions = { qemuVersion: q.version };
      if (q.package) v.qemuPackage = q.package;
      const ovmf = pkgs.get("ovmf");
      const seabios = pkgs.get("seabios");
      if (ovmf) v.ovmfVersion = ovmf;
      if (seabios) v.seabiosVersion = seabios;
      return v;
    })();
    value.catch(() => {
      if (versionsMemo?.value === value) versionsMemo = undefined;
    });
    versionsMemo = { key, value };
  }
  return versionsMemo.value;
}

/** Paths and versions together. Memoized; use hostPaths() where versions are not needed. */
export async function hostFacts(): Promise<HostFacts> {
  const [p, v] = await Promise.all([hostPaths(), hostVersions()]);
  const facts: HostFacts = {
    qemuBinary: p.qemuBinary,
    qemuVersion: v.qemuVersion,
    qemuImg: p.qemuImg,
    ovmf: { ...p.ovmf },
    seabios: { ...p.seabios },
    kvmDevice: p.kvmDevice,
  };
  if (v.qemuPackage) facts.qemuPackage = v.qemuPackage;
  if (v.ovmfVersion) facts.ovmf.version = v.ovmfVersion;
  if (v.seabiosVersion) facts.seabios.version = v.seabiosVersion;
  if (p.ipxeRomDir) facts.ipxeRomDir = p.ipxeRomDir;
  return facts;
}

/** For tests that change the environment. */
export function clearHostFactsCache(): void {
  pathsMemo = undefined;
  versionsMemo = undefined;
  qemuVersionMemo.clear();
}
