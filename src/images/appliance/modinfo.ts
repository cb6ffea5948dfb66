// Kernel module metadata without depmod: Debian's kernel .deb ships no modules.dep, so the
// dependencies come from each module's ELF ".modinfo" section (NUL-separated key=value strings).
import { gunzipSync } from "node:zlib";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { run } from "./run.js";

export interface ModInfo {
  /** key -> values, in section order (keys like alias/depends may repeat). */
  fields: Map<string, string[]>;
}

export function modinfoValue(info: ModInfo, key: string): string | undefined {
  return info.fields.get(key)?.[0];
}

/** Module names treat '-' and '_' as the same character; the kernel reports '_'. */
export function canonicalModuleName(name: string): string {
  return name.replace(/-/g, "_");
}

const MODULE_SUFFIX = /\.ko(\.(xz|zst|gz))?$/;

export function moduleNameFromPath(path: string): string {
  const base = path.slice(path.lastIndexOf("/") + 1);
  return canonicalModuleName(base.replace(MODULE_SUFFIX, ""));
}

/** Reads the ".modinfo" section of an ELF relocatable object (a decompressed .ko). */
export function parseModinfo(elf: Buffer): ModInfo {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) throw new Error("not an ELF file");
  const is64 = elf[4] === 2;
  const le = elf[5] === 1;
  if (!le) throw new Error("big-endian ELF is not supported");
  const u16 = (o: number) => elf.readUInt16LE(o);
  const u32 = (o: number) => elf.readUInt32LE(o);
  const word = (o: number) => (is64 ? Number(elf.readBigUInt64LE(o)) : elf.readUInt32LE(o));
  const shoff = is64 ? word(0x28) : u32(0x20);
  const shentsize = u16(is64 ? 0x3a : 0x2e);
  const shnum = u16(is64 ? 0x3c : 0x30);
  const shstrndx = u16(is64 ? 0x3e : 0x32);
  if (shoff === 0 || shnum === 0 || shoff + shnum * shentsize > elf.length) throw new Error("ELF has no usable section table");
  const section = (i: number) => {
    const b = shoff + i * shentsize;
    return is64
      ? { name: u32(b), offset: word(b + 0x18), size: word(b + 0x20) }
      : { name: u32(b), offset: u32(b + 0x10), size: u32(b + 0x14) };
  };
  const strtab = section(shstrndx);
  const nameAt = (o: number) => {
    const start = strtab.offset + o;
    const end = elf.indexOf(0, start);
    return elf.toString("latin1", start, end);
  };
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (nameAt(s.name) !== ".modinfo") continue;
    if (s.offset + s.size > elf.length) throw new Error(".modinfo section runs past the end of the file");
    const fields = new Map<string, string[]>();
    for (const item of elf.toString("utf8", s.offset, s.offset + s.size).split("\0")) {
      const eq = item.indexOf("=");
      if (eq <= 0) continue;
      const key = item.slice(0, eq);
      const list = fields.get(key) ?? [];
      list.push(item.slice(eq + 1));
      fields.set(key, list);
    }
    return { fields };
  }
  throw new Error("ELF has no .modinfo section");
}

/** Raw .ko bytes, decompressing .ko.gz natively and .ko.xz / .ko.zst with xz / zstd. */
export async function readModuleFile(path: string): Promise<Buffer> {
  if (path.endsWith(".ko")) return readFile(path);
  if (path.endsWith(".ko.gz")) return gunzipSync(await readFile(path));
  if (path.endsWith(".ko.xz")) return (await run("xz", ["-dc", path])).stdoutBuffer;
  if (path.endsWith(".ko.zst")) return (await run("zstd", ["-dcq", path])).stdoutBuffer;
  throw new Error(`unknown module file type: ${path}`);
}

/** Where a module goes in the guest: always an uncompressed .ko (the signature covers the .ko). */
export function installedModulePath(relPath: string): string {
  return relPath.replace(/\.ko\.(xz|zst|gz)$/, ".ko");
}

export interface KernelModule {
  name: string;
  /** Path relative to /lib/modules/<release>, e.g. "kernel/drivers/ata/ata_piix.ko". */
  relPath: string;
  depends: string[];
  softdepPre: string[];
}

/**
 * The modules of one kernel tree (/lib/modules/<release>): a name index built from file
 * names and, on demand, each module's .modinfo.
 */
export class ModuleTree {
  private readonly info = new Map<string, KernelModule>();

  private constructor(
    readonly root: string,
    readonly paths: ReadonlyMap<string, string>,
    readonly builtin: ReadonlySet<string>,
  ) {}

  static async open(root: string): Promise<ModuleTree> {
    const paths = new Map<string, string>();
    const walk = async (rel: string): Promise<void> => {
      for (const d of await readdir(join(root, rel), { withFileTypes: true })) {
        const r = rel === "" ? d.name : `${rel}/${d.name}`;
        if (d.isDirectory()) await walk(r);
        else if (MODULE_SUFFIX.test(d.name)) paths.set(moduleNameFromPath(d.name), r);
      }
    };
    await walk("kernel");
    let builtin = new Set<string>();
    try {
      builtin = new Set((await readFile(join(root, "modules.builtin"), "utf8")).split("\n").filter(Boolean).map(moduleNameFromPath));
    } catch {
      // older trees have no modules.builtin; every requested module must then be a file
    }
    return new ModuleTree(root, paths, builtin);
  }

  async module(name: string): Promise<KernelModule> {
    const n = canonicalModuleName(name);
    const cached = this.info.get(n);
    if (cached) return cached;
    const relPath = this.paths.get(n);
    if (!relPath) throw new Error(`kernel module ${n} not found under ${this.root}`);
    const mi = parseModinfo(await readModuleFile(join(this.root, relPath)));
    const depends = (modinfoValue(mi, "depends") ?? "").split(",").filter(Boolean).map(canonicalModuleName);
    const softdepPre = (mi.fields.get("softdep") ?? []).flatMap(parseSoftdepPre);
    const m: KernelModule = { name: n, relPath, depends, softdepPre };
    this.info.set(n, m);
    return m;
  }

  /**
   * The closure of `wanted` in load order (every module after its dependencies). Built-in
   * modules are skipped. Soft "pre:" dependencies are included when they name a module file
   * of this tree (aliases such as "crypto-crc32c" are left to the kernel's own fallbacks).
   */
  async resolve(wanted: readonly string[]): Promise<{ order: KernelModule[]; builtin: string[] }> {
    const order: KernelModule[] = [];
    const builtin: string[] = [];
    const state = new Map<string, "visiting" | "done">();
    const visit = async (name: string, chain: string[], optional: boolean): Promise<void> => {
      const n = canonicalModuleName(name);
      const st = state.get(n);
      if (st === "done") return;
      if (st === "visiting") throw new Error(`module dependency cycle: ${[...chain, n].join(" -> ")}`);
      if (!this.paths.has(n)) {
        if (this.builtin.has(n)) {
          state.set(n, "done");
          builtin.push(n);
          return;
        }
        if (optional) return;
        throw new Error(`kernel module ${n} not found under ${this.root}${chain.length ? ` (needed by ${chain.join(" -> ")})` : ""}`);
      }
      state.set(n, "visiting");
      const m = await this.module(n);
      for (const d of m.softdepPre) await visit(d, [...chain, n], true);
      for (const d of m.depends) await visit(d, [...chain, n], false);
      state.set(n, "done");
      order.push(m);
    };
    for (const w of wanted) await visit(w, [], false);
    return { order, builtin };
  }
}

export function parseSoftdepPre(softdep: string): string[] {
  // "pre: a b post: c"
  const out: string[] = [];
  let inPre = false;
  for (const tok of softdep.split(/\s+/).filter(Boolean)) {
    if (tok === "pre:") inPre = true;
    else if (tok === "post:") inPre = false;
    else if (inPre) out.push(canonicalModuleName(tok));
  }
  return out;
}

/**
 * modules.dep in depmod's format: "<module>: <deps...>", each dependency list ordered so that
 * loading from the end to the start works (the last entry is loaded first), as kmod and
 * busybox modprobe expect. `order` must already be in load order.
 */
export function renderModulesDep(order: readonly KernelModule[]): string {
  const byName = new Map(order.map((m) => [m.name, m]));
  const position = new Map(order.map((m, i) => [m.name, i]));
  const lines: string[] = [];
  for (const m of order) {
    const closure = new Set<string>();
    const add = (n: string): void => {
      const d = byName.get(n);
      if (!d || closure.has(n)) return;
      closure.add(n);
      d.depends.forEach(add);
    };
    m.depends.forEach(add);
    const deps = [...closure].sort((a, b) => (position.get(b) ?? 0) - (position.get(a) ?? 0));
    const path = (x: KernelModule) => installedModulePath(x.relPath);
    lines.push(`${path(m)}:${deps.map((d) => " " + path(byName.get(d)!)).join("")}`);
  }
  return lines.join("\n") + "\n";
}
