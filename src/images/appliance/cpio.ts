// The initramfs archive: SVR4 "newc" cpio (what the kernel unpacks), written and read in TypeScript
// so the build needs no external cpio and produces the same bytes from the same inputs.
import { gzipSync } from "node:zlib";

export type CpioEntry =
  | { type: "dir"; path: string; mode: number }
  | { type: "file"; path: string; mode: number; data: Buffer }
  | { type: "symlink"; path: string; target: string }
  | { type: "char"; path: string; mode: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFMT = 0o170000;
const MAGIC = "070701";
const HEADER_LEN = 110;
const TRAILER = "TRAILER!!!";

/** Archive paths are relative ("bin/sh"); accept "/bin/sh" too. */
export function normalizeArchivePath(p: string): string {
  const parts = p.split("/").filter((s) => s !== "" && s !== ".");
  if (parts.some((s) => s === "..")) throw new Error(`cpio path must not contain "..": ${p}`);
  return parts.length === 0 ? "." : parts.join("/");
}

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

interface RawRecord {
  name: string;
  mode: number;
  nlink: number;
  data: Buffer;
  rdevMajor: number;
  rdevMinor: number;
}

function encodeRecord(ino: number, mtime: number, r: RawRecord): Buffer[] {
  const name = Buffer.from(r.name + "\0", "utf8");
  const fields = [
    ino, r.mode, 0 /* uid */, 0 /* gid */, r.nlink, mtime, r.data.length,
    0 /* devmajor */, 0 /* devminor */, r.rdevMajor, r.rdevMinor, name.length, 0 /* check */,
  ];
  const header = Buffer.from(MAGIC + fields.map(hex8).join(""), "ascii");
  const out: Buffer[] = [header, name, Buffer.alloc(pad4(HEADER_LEN + name.length))];
  if (r.data.length > 0) out.push(r.data, Buffer.alloc(pad4(r.data.length)));
  return out;
}

/** Writes entries in the given order (parents must come before children; see FsTree). */
export function writeNewc(entries: readonly CpioEntry[], opts: { mtime?: number } = {}): Buffer {
  const mtime = opts.mtime ?? 0;
  const chunks: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const name = normalizeArchivePath(e.path);
    let rec: RawRecord;
    switch (e.type) {
      case "dir":
        rec = { name, mode: S_IFDIR | (e.mode & 0o7777), nlink: 2, data: Buffer.alloc(0), rdevMajor: 0, rdevMinor: 0 };
        break;
      case "file":
        rec = { name, mode: S_IFREG | (e.mode & 0o7777), nlink: 1, data: e.data, rdevMajor: 0, rdevMinor: 0 };
        break;
      case "symlink":
        rec = { name, mode: S_IFLNK | 0o777, nlink: 1, data: Buffer.from(e.target, "utf8"), rdevMajor: 0, rdevMinor: 0 };
        break;
      case "char":
        rec = { name, mode: S_IFCHR | (e.mode & 0o7777), nlink: 1, data: Buffer.alloc(0), rdevMajor: e.major, rdevMinor: e.minor };
        break;
    }
    chunks.push(...encodeRecord(ino++, mtime, rec));
  }
  chunks.push(...encodeRecord(0, 0, { name: TRAILER, mode: 0, nlink: 1, data: Buffer.alloc(0), rdevMajor: 0, rdevMinor: 0 }));
  return Buffer.concat(chunks);
}

export function gzipInitramfs(cpio: Buffer): Buffer {
  return gzipSync(cpio, { level: 9 });
}

/** Parses a newc archive back into entries (for verification and tests). */
export function readNewc(buf: Buffer): CpioEntry[] {
  const entries: CpioEntry[] = [];
  let off = 0;
  for (;;) {
    if (off + HEADER_LEN > buf.length) throw new Error(`cpio: truncated header at ${off}`);
    const magic = buf.toString("ascii", off, off + 6);
    if (magic !== MAGIC) throw new Error(`cpio: bad magic ${JSON.stringify(magic)} at ${off}`);
    const field = (i: number): number => parseInt(buf.toString("ascii", off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const fileSize = field(6);
    const rdevMajor = field(9);
    const rdevMinor = field(10);
    const nameSize = field(11);
    const nameStart = off + HEADER_LEN;
    const name = buf.toString("utf8", nameStart, nameStart + nameSize - 1);
    const dataStart = nameStart + nameSize + pad4(HEADER_LEN + nameSize);
    const dataEnd = dataStart + fileSize;
    if (dataEnd > buf.length) throw new Error(`cpio: truncated data for ${name}`);
    const data = buf.subarray(dataStart, dataEnd);
    off = dataEnd + pad4(fileSize);
    if (name === TRAILER) return entries;
    const perm = mode & 0o7777;
    switch (mode & S_IFMT) {
      case S_IFDIR: entries.push({ type: "dir", path: name, mode: perm }); break;
      case S_IFREG: entries.push({ type: "file", path: name, mode: perm, data: Buffer.from(data) }); break;
      case S_IFLNK: entries.push({ type: "symlink", path: name, target: data.toString("utf8") }); break;
      case S_IFCHR: entries.push({ type: "char", path: name, mode: perm, major: rdevMajor, minor: rdevMinor }); break;
      default: throw new Error(`cpio: unsupported file type ${(mode & S_IFMT).toString(8)} for ${name}`);
    }
  }
}

/**
 * An in-memory file tree for the initramfs. Parent directories are created implicitly and
 * entries come out sorted by path, so every directory precedes its contents (the kernel's
 * unpacker needs that) and the archive is byte-for-byte reproducible.
 */
export class FsTree {
  private readonly nodes = new Map<string, CpioEntry>();

  constructor() {
    this.nodes.set(".", { type: "dir", path: ".", mode: 0o755 });
  }

  has(path: string): boolean {
    return this.nodes.has(normalizeArchivePath(path));
  }

  get(path: string): CpioEntry | undefined {
    return this.nodes.get(normalizeArchivePath(path));
  }

  dir(path: string, mode = 0o755): this {
    const p = normalizeArchivePath(path);
    const existing = this.nodes.get(p);
    if (existing && existing.type !== "dir") throw new Error(`initramfs: ${p} exists and is not a directory`);
    this.parents(p);
    this.nodes.set(p, { type: "dir", path: p, mode });
    return this;
  }

  file(path: string, data: Buffer | string, mode = 0o644): this {
    return this.put({ type: "file", path: normalizeArchivePath(path), mode, data: typeof data === "string" ? Buffer.from(data, "utf8") : data });
  }

  symlink(path: string, target: string): this {
    return this.put({ type: "symlink", path: normalizeArchivePath(path), target });
  }

  charDevice(path: string, major: number, minor: number, mode = 0o600): this {
    return this.put({ type: "char", path: normalizeArchivePath(path), mode, major, minor });
  }

  entries(): CpioEntry[] {
    return [...this.nodes.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  private put(e: CpioEntry): this {
    if (this.nodes.get(e.path)?.type === "dir") throw new Error(`initramfs: ${e.path} is a directory`);
    this.parents(e.path);
    this.nodes.set(e.path, e);
    return this;
  }

  private parents(p: string): void {
    const parts = p.split("/");
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      const existing = this.nodes.get(d);
      if (!existing) this.nodes.set(d, { type: "dir", path: d, mode: 0o755 });
      else if (existing.type !== "dir") throw new Error(`initramfs: ${d} is not a directory (needed for ${p})`);
    }
  }
}
