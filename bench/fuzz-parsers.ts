/**
 * Fuzzes the firmware parsers (issue 9 C.8): the variable store, the variable record, the
 * load option and the device path (binary, and text), with mutations of the real stores in
 * test/fixtures/firmware and with random structure-aware inputs. Seeded: input i of a parser
 * is a function of (seed, parser, i) alone, so any input can be replayed.
 *
 *   node dist/bench/fuzz-parsers.js [--inputs 1000000] [--seed 1] [--replay PARSER:INDEX]
 *
 * Each input ends as one of:
 *   crash        an exception that is not a FirmwareError (the typed error of src/firmware);
 *   refused      a FirmwareError;
 *   accepted     parsed; then checked for a "silent short read": its re-encoding must give
 *                back every input byte (store: every byte of the variable region is a record's
 *                header, name or data, erased padding, erased space, or the bytes of a reported
 *                interrupted write; path: every node, and the text form parses back to the same
 *                bytes), and it must hold every variable/node its bytes hold (store: every
 *                4-aligned place that holds a whole record header of a written variable is a
 *                record start; path/option: an independent walk of the node lengths finds as
 *                many nodes).
 * Inputs generated valid (a store built by the codec, then possibly cut mid-append the way a
 * killed QEMU leaves it) must be accepted: a refusal of one is counted as "valid refused".
 * Exit status 1 when there was any crash, short read or valid refusal.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import {
  ATTRS_NV_BS_RT, decodeLoadOption, devicePathFromText, devicePathToText, encodeDevicePath, encodeDevicePathList, encodeEfiTime,
  encodeLoadOption, FirmwareError, GUIDS, guidToBytes, listBootOptionIds, loadOptionPaths, parseDevicePath, parseDevicePathList,
  parseVariableRecord, parseVarStore, readBootOptionBytes, VAR_STATE, VARIABLE_ATTRIBUTE as VA, type DevicePathNode, type VarStore,
} from "../src/firmware/index.js";
import { buildVarStoreImage, FIXTURE_DIR } from "../test/fixtures/firmware/helpers.js";

// ---- command line ------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const TOTAL = Number(opt("--inputs") ?? 1_000_000);
const SEED = Number(opt("--seed") ?? 1);
const REPLAY = opt("--replay");

// ---- seeded randomness -------------------------------------------------------------------------

/** mulberry32: small, fast, good enough to drive mutations. */
function rngFor(...parts: number[]): () => number {
  let h = 0x9e3779b9;
  for (const p of parts) h = Math.imul(h ^ (p >>> 0), 0x85ebca6b) ^ (h >>> 13);
  let a = h >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rand {
  constructor(readonly next: () => number) {}
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  bool(p = 0.5): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

const INTERESTING = [0x00, 0xff, 0x55, 0xaa, 0x3f, 0x3e, 0x3d, 0x3c, 0x7f, 0xfe, 0xfd, 0x01, 0x02, 0x04, 0x80, 0x7e, 0x10, 0x20, 0x40];

/** 1-4 mutations: bit flips, interesting bytes, random bytes, 16/32-bit values, in `[lo, hi)`. */
function mutate(r: Rand, b: Uint8Array, lo = 0, hi = b.length): void {
  if (hi <= lo) return;
  const n = r.range(1, 4);
  for (let k = 0; k < n; k++) {
    const at = lo + r.int(hi - lo);
    switch (r.int(5)) {
      case 0:
        b[at] = b[at]! ^ (1 << r.int(8));
        break;
      case 1:
        b[at] = r.pick(INTERESTING);
        break;
      case 2:
        b[at] = r.int(256);
        break;
      case 3: {
        const v = r.pick([0, 1, 2, 3, 4, 0xffff, 0x7fff, 0x8000, 0x55aa, r.int(0x10000)]);
        b[at] = v & 0xff;
        if (at + 1 < b.length) b[at + 1] = v >> 8;
        break;
      }
      default: {
        const v = r.pick([0, 1, 4, 60, 0xffffffff, 0x7fffffff, 0x80000000, r.int(0x100), r.int(0x10000), r.int(2 ** 32)]);
        for (let i = 0; i < 4 && at + i < b.length; i++) b[at + i] = (v >>> (8 * i)) & 0xff;
      }
    }
  }
}

/** Mutations that change the length too: cut, extend, duplicate or drop a chunk, splice another corpus item in. */
function reshape(r: Rand, b: Uint8Array, corpus: readonly Uint8Array[]): Uint8Array {
  switch (r.int(6)) {
    case 0:
      return b.slice(0, r.int(b.length + 1));
    case 1:
      return concat(b, r.bool() ? r.bytes(r.range(1, 16)) : new Uint8Array(r.range(1, 16)).fill(r.pick(INTERESTING)));
    case 2: {
      const at = r.int(b.length + 1);
      const len = r.range(1, 24);
      return concat(b.slice(0, at), b.slice(at, at + len), b.slice(at));
    }
    case 3: {
      const at = r.int(b.length + 1);
      return concat(b.slice(0, at), b.slice(at + r.range(1, 24)));
    }
    case 4: {
      const other = r.pick(corpus);
      const from = r.int(other.length + 1);
      const at = r.int(b.length + 1);
      return concat(b.slice(0, at), other.slice(from, from + r.range(1, 64)), b.slice(at));
    }
    default:
      return b;
  }
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean =>
  a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length), Buffer.from(b.buffer, b.byteOffset, b.length)) === 0;
const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString("hex");
const rd16 = (b: Uint8Array, o: number): number => b[o]! | (b[o + 1]! << 8);
const rd32 = (b: Uint8Array, o: number): number => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
const align4 = (n: number): number => (n + 3) & ~3;

// ---- corpus from the real stores -----------------------------------------------------------------

const STORE_FILES = readdirSync(FIXTURE_DIR).filter((f) => f.endsWith(".fd")).sort();
const STORES = STORE_FILES.map((f) => new Uint8Array(readFileSync(join(FIXTURE_DIR, f))));
const SMALL_STORES = STORES.filter((b) => b.length <= 0x20000);
const PARSED = STORES.map((b) => parseVarStore(b));
/** Each record's bytes with its padding and 8 bytes after it, and whether the store is authenticated. */
const RECORDS: { bytes: Uint8Array; auth: boolean }[] = [];
for (let i = 0; i < PARSED.length; i++) {
  const s = PARSED[i]!;
  for (const r of s.records()) RECORDS.push({ bytes: STORES[i]!.slice(r.offset, Math.min(align4(r.offset + r.size) + 8, s.layout.variablesEnd)), auth: s.layout.authenticated });
}
const OPTIONS: Uint8Array[] = [];
for (const s of PARSED) for (const id of listBootOptionIds(s)) OPTIONS.push(readBootOptionBytes(s, id)!);
const PATHS: Uint8Array[] = [];
for (const o of OPTIONS) {
  try {
    for (const p of loadOptionPaths(decodeLoadOption(o))) PATHS.push(encodeDevicePath(p));
  } catch {
    // Undecodable options are corpus for the option parser only.
  }
}
for (const s of PARSED) {
  for (const v of s.list()) {
    if (v.guid === GUIDS.globalVariable && /^(ConIn|ConOut|ErrOut|ConInDev|ConOutDev|ErrOutDev)$/.test(v.name)) PATHS.push(v.data);
  }
}
const NODES: DevicePathNode[] = [];
for (const p of PATHS) for (const n of parseDevicePath(p)) if (n.type !== 0x7f) NODES.push(n);

// ---- the checks ------------------------------------------------------------------------------------

type Outcome = { kind: "crash"; error: string } | { kind: "refused" } | { kind: "accepted"; shortRead: string | null };

function run(fn: () => string | null): Outcome {
  try {
    return { kind: "accepted", shortRead: fn() };
  } catch (e) {
    if (e instanceof FirmwareError) return { kind: "refused" };
    return { kind: "crash", error: e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ""}` : String(e) };
  }
}

const ERASED = new Uint8Array(0x10000).fill(0xff);

function firstNotErased(b: Uint8Array, from: number, to: number): number {
  for (let o = from; o < to; o += ERASED.length) {
    const n = Math.min(ERASED.length, to - o);
    if (sameBytes(b.subarray(o, o + n), ERASED.subarray(0, n))) continue;
    for (let i = o; i < o + n; i++) if (b[i] !== 0xff) return i;
  }
  return -1;
}

/** A whole header of a variable SetVariable wrote at `o`, with name and data before `end`. */
function plausibleHeader(b: Uint8Array, o: number, end: number, auth: boolean): boolean {
  const hs = auth ? 60 : 32;
  if (o + hs > end || rd16(b, o) !== 0x55aa) return false;
  if (![0x3f, 0x3e, 0x3d, 0x3c].includes(b[o + 2]!)) return false;
  const ns = rd32(b, o + (auth ? 36 : 8));
  const ds = rd32(b, o + (auth ? 40 : 12));
  if (ns < 4 || ns % 2 !== 0 || o + hs + ns + ds > end) return false;
  const n0 = o + hs;
  if (b[n0 + ns - 2] !== 0 || b[n0 + ns - 1] !== 0) return false;
  for (let i = n0; i < n0 + ns - 2; i += 2) if (b[i] === 0 && b[i + 1] === 0) return false;
  return true;
}

/** The header bytes a record's fields give (sizes only when the record is complete). */
function headerOf(r: ReturnType<VarStore["records"]>[number], auth: boolean, complete: boolean, raw: Uint8Array): Uint8Array {
  const hs = auth ? 60 : 32;
  const h = raw.slice(0, hs); // start from the raw bytes, overwrite every field the parser returned
  const dv = new DataView(h.buffer);
  dv.setUint16(0, 0x55aa, true);
  h[2] = r.state;
  dv.setUint32(4, r.attributes, true);
  if (auth) {
    dv.setBigUint64(8, r.monotonicCount, true);
    if (r.timestamp !== null) h.set(encodeEfiTime(r.timestamp), 16);
    dv.setUint32(32, r.pubKeyIndex, true);
    if (complete) {
      dv.setUint32(36, r.nameBytes.length, true);
      dv.setUint32(40, r.data.length, true);
    }
    h.set(guidToBytes(r.guid), 44);
  } else {
    if (complete) {
      dv.setUint32(8, r.nameBytes.length, true);
      dv.setUint32(12, r.data.length, true);
    }
    h.set(guidToBytes(r.guid), 16);
  }
  return h;
}

function checkStore(b: Uint8Array): string | null {
  const s = parseVarStore(b);
  if (!sameBytes(s.toBuffer(), b)) return "toBuffer() is not the input";
  const L = s.layout;
  const auth = L.authenticated;
  const hs = L.recordHeaderSize;
  const iw = s.interruptedWrite();
  const starts = new Set<number>();
  let off = L.variablesStart;
  for (const r of s.records()) {
    if (r.offset !== off) return `record at 0x${r.offset.toString(16)}, the previous one ends at 0x${off.toString(16)}`;
    starts.add(off);
    const complete = r.size > hs || (b[off + 2] !== 0xff && rd32(b, off + (auth ? 36 : 8)) !== 0xffffffff && rd32(b, off + (auth ? 40 : 12)) !== 0xffffffff && rd32(b, off + 4) !== 0xffffffff);
    const enc = concat(headerOf(r, auth, complete, b.subarray(off, off + hs)), r.nameBytes, r.data);
    if (r.size !== enc.length) return `record at 0x${off.toString(16)}: size ${r.size}, fields ${enc.length}`;
    if (!sameBytes(enc, b.subarray(off, off + enc.length))) return `record at 0x${off.toString(16)} does not re-encode to its bytes`;
    const end = off + r.size;
    if (iw !== null && iw.offset === off) {
      off = end;
      break;
    }
    for (let i = end; i < Math.min(align4(end), L.variablesEnd); i++) if (b[i] !== 0xff) return `padding byte 0x${i.toString(16)} not erased`;
    off = align4(end);
  }
  let tailFrom = Math.min(off, L.variablesEnd);
  if (iw !== null) {
    if (!(iw.offset === tailFrom || iw.offset + hs === tailFrom)) return `interrupted write at 0x${iw.offset.toString(16)} is not at the end of the list`;
    tailFrom = Math.max(tailFrom, iw.offset + iw.length);
  }
  const dirty = firstNotErased(b, tailFrom, L.variablesEnd);
  if (dirty >= 0) return `byte 0x${dirty.toString(16)} after the last record is not erased`;
  // Every written variable the bytes hold is a record the parser read.
  for (let o = L.variablesStart; o < L.variablesEnd; o += 4) {
    if (iw !== null && o > iw.offset && o < iw.offset + iw.length) continue;
    if (plausibleHeader(b, o, L.variablesEnd, auth) && !starts.has(o)) return `a variable record at 0x${o.toString(16)} was not read`;
  }
  // Every ADDED record is a live variable.
  const live = new Set(s.list().map((v) => v.offset));
  for (const r of s.records()) if (r.state === VAR_STATE.ADDED && !live.has(r.offset)) return `ADDED record at 0x${r.offset.toString(16)} not live`;
  return null;
}

function checkRecord(b: Uint8Array, auth: boolean): string | null {
  const r = parseVariableRecord(b, 0, { authenticated: auth });
  const hs = auth ? 60 : 32;
  const complete = r.size > hs || (b[2] !== 0xff && rd32(b, auth ? 36 : 8) !== 0xffffffff && rd32(b, auth ? 40 : 12) !== 0xffffffff && rd32(b, 4) !== 0xffffffff);
  const enc = concat(headerOf(r, auth, complete, b.subarray(0, hs)), r.nameBytes, r.data);
  if (r.size !== enc.length || !sameBytes(enc, b.subarray(0, enc.length))) return "record does not re-encode to its bytes";
  return null;
}

/** Nodes in `b` by their length fields alone, up to and including End Entire; -1 when malformed. */
function walkNodes(b: Uint8Array, from: number, to: number): { count: number; next: number } {
  let o = from;
  let count = 0;
  while (o + 4 <= to) {
    const len = rd16(b, o + 2);
    if (len < 4 || o + len > to) return { count: -1, next: o };
    count++;
    const end = b[o] === 0x7f && b[o + 1] === 0xff;
    o += len;
    if (end) return { count, next: o };
  }
  return { count: -1, next: o };
}

function checkPathText(path: ReturnType<typeof parseDevicePath>, bytes: Uint8Array): string | null {
  if (path.length <= 1) return null; // only the End node: no text
  const text = devicePathToText(path);
  const back = encodeDevicePath(devicePathFromText(text));
  return sameBytes(back, bytes) ? null : `text ${JSON.stringify(text.slice(0, 120))} does not give the bytes back`;
}

function checkPath(b: Uint8Array): string | null {
  const p = parseDevicePath(b);
  if (!sameBytes(encodeDevicePath(p), b)) return "path does not re-encode to its bytes";
  const w = walkNodes(b, 0, b.length);
  if (w.count !== p.length || w.next !== b.length) return `path has ${w.count} nodes by their lengths, parsed ${p.length}`;
  return checkPathText(p, b);
}

function checkOption(b: Uint8Array): string | null {
  const o = decodeLoadOption(b);
  if (!sameBytes(encodeLoadOption(o), b)) return "option does not re-encode to its bytes";
  let paths;
  try {
    paths = loadOptionPaths(o);
  } catch (e) {
    if (e instanceof FirmwareError) return null; // a refused path list: the option is read, its paths refused
    throw e;
  }
  const fpl = o.filePathList;
  if (!sameBytes(encodeDevicePathList(paths), fpl)) return "file path list does not re-encode to its bytes";
  let nodes = 0;
  for (let at = 0; at < fpl.length; ) {
    const w = walkNodes(fpl, at, fpl.length);
    if (w.count < 0) return "accepted a file path list an independent walk rejects";
    nodes += w.count;
    at = w.next;
  }
  if (nodes !== paths.reduce((n, p) => n + p.length, 0)) return `file path list has ${nodes} nodes by their lengths, parsed fewer`;
  for (const p of paths) {
    const why = checkPathText(p, encodeDevicePath(p));
    if (why !== null) return why;
  }
  return null;
}

function checkText(t: string): string | null {
  const p = devicePathFromText(t);
  const bytes = encodeDevicePath(p);
  const printed = devicePathToText(p);
  const again = encodeDevicePath(devicePathFromText(printed));
  return sameBytes(again, bytes) ? null : `${JSON.stringify(t)} -> ${JSON.stringify(printed)} changes the bytes`;
}

// ---- generators ------------------------------------------------------------------------------------

const TEST_GUIDS = [GUIDS.globalVariable, GUIDS.imageSecurityDatabase, "12345678-9abc-def0-1234-56789abcdef0", "0ea85f0a-0000-4000-8000-00000000abcd"];

/** A store the codec builds (valid by construction), possibly cut mid-append like a killed QEMU leaves it. */
function builtStore(r: Rand): { bytes: Uint8Array; cut: boolean } {
  const s = parseVarStore(buildVarStoreImage(r.range(512, 6000), r.range(0, 512), r.bool(0.85)));
  const names = ["A", "B", "Boot0001", "BootOrder", "LongVariableName", "db", "\u00e9t\u00e9", "X"];
  const ops = r.range(1, 30);
  for (let i = 0; i < ops; i++) {
    const name = r.pick(names);
    const guid = r.pick(TEST_GUIDS);
    try {
      if (r.bool(0.15)) s.delete(name, guid);
      else {
        const attrs = ATTRS_NV_BS_RT | (r.bool(0.1) ? VA.APPEND_WRITE : 0) | (r.bool(0.1) ? VA.TIME_BASED_AUTHENTICATED_WRITE_ACCESS : 0);
        s.set(name, guid, attrs, r.bytes(r.range(1, 120)));
      }
    } catch (e) {
      if (!(e instanceof FirmwareError)) throw e;
    }
  }
  const b = s.toBuffer();
  const end = s.layout.variablesEnd - s.freeBytes();
  if (r.bool(0.3) && end > s.layout.variablesStart) {
    // Append one more record, then keep only a prefix of its bytes and no State: an interrupted write.
    const t = parseVarStore(b);
    try {
      t.set(`Cut${r.int(100)}`, r.pick(TEST_GUIDS), ATTRS_NV_BS_RT, r.bytes(r.range(1, 80)));
    } catch {
      return { bytes: b, cut: false };
    }
    const withRec = t.toBuffer();
    if (withRec.length !== b.length || t.records().at(-1)!.offset !== end) return { bytes: b, cut: false };
    const rec = t.records().at(-1)!;
    const keep = r.range(1, rec.size);
    const out = b.slice();
    out.set(withRec.subarray(end, end + keep), end);
    if (keep > 2) out[end + 2] = 0xff;
    return { bytes: out, cut: true };
  }
  return { bytes: b, cut: false };
}

function genStore(r: Rand): { input: Uint8Array; valid: boolean } {
  const mode = r.int(10);
  if (mode < 3) {
    const { bytes, cut } = builtStore(r);
    if (r.bool(0.4)) return { input: bytes, valid: true };
    // Mutated where the records are, mostly.
    const s = parseVarStoreQuiet(bytes);
    const used = s === null ? bytes.length : s.layout.variablesEnd - s.freeBytes() + 64;
    mutate(r, bytes, r.bool(0.8) ? 0x48 : 0, Math.min(bytes.length, r.bool(0.8) ? used : bytes.length));
    void cut;
    return { input: bytes, valid: false };
  }
  const i = r.int(mode < 9 ? SMALL_STORES.length : STORES.length);
  const base = (mode < 9 ? SMALL_STORES : STORES)[i]!;
  const b = base.slice();
  const s = PARSED[STORES.indexOf(base)]!;
  const used = s.layout.variablesEnd - s.freeBytes() + 64;
  const where = r.int(10);
  if (where < 6) mutate(r, b, s.layout.variablesStart, used); // the records
  else if (where < 8) {
    // A record header, field by field.
    const recs: readonly { offset: number }[] = s.records().length > 0 ? s.records() : [{ offset: s.layout.variablesStart }];
    const rec = r.pick(recs);
    mutate(r, b, rec.offset, rec.offset + s.layout.recordHeaderSize);
  } else if (where < 9) mutate(r, b, 0, 0x70); // volume and store headers
  else mutate(r, b, 0, b.length);
  if (r.bool(0.03)) return { input: b.slice(0, r.int(b.length)), valid: false };
  return { input: b, valid: false };
}

function parseVarStoreQuiet(b: Uint8Array): VarStore | null {
  try {
    return parseVarStore(b);
  } catch {
    return null;
  }
}

function genRecord(r: Rand): { input: Uint8Array; auth: boolean } {
  if (r.bool(0.7)) {
    const c = r.pick(RECORDS);
    const b = c.bytes.slice();
    if (r.bool(0.8)) mutate(r, b, 0, r.bool(0.7) ? Math.min(60, b.length) : b.length);
    return { input: r.bool(0.2) ? reshape(r, b, RECORDS.map((x) => x.bytes)) : b, auth: r.bool(0.95) ? c.auth : !c.auth };
  }
  // A header from random fields, name and data of random (and sometimes inconsistent) sizes.
  const auth = r.bool(0.8);
  const hs = auth ? 60 : 32;
  const nameChars = r.range(0, 12);
  const name = new Uint8Array(nameChars * 2 + 2);
  for (let i = 0; i < nameChars; i++) name[i * 2] = r.range(0x20, 0x7e);
  const data = r.bytes(r.range(0, 40));
  const h = new Uint8Array(hs).fill(r.bool(0.1) ? 0xff : 0);
  const dv = new DataView(h.buffer);
  dv.setUint16(0, r.bool(0.9) ? 0x55aa : r.int(0x10000), true);
  h[2] = r.bool(0.8) ? r.pick([0xff, 0x7f, 0x3f, 0x3e, 0x3d, 0x3c]) : r.int(256);
  dv.setUint32(4, r.bool(0.8) ? 7 : r.int(2 ** 32), true);
  const ns = r.bool(0.8) ? name.length : r.pick([0, 1, 0xffffffff, name.length + r.range(-3, 3), r.int(2 ** 32)]);
  const ds = r.bool(0.8) ? data.length : r.pick([0, 0xffffffff, data.length + r.range(-3, 3), r.int(2 ** 32)]);
  dv.setUint32(auth ? 36 : 8, ns >>> 0, true);
  dv.setUint32(auth ? 40 : 12, ds >>> 0, true);
  h.set(r.bytes(16), auth ? 44 : 16);
  return { input: concat(h, name, data, r.bool(0.5) ? new Uint8Array(r.int(4)).fill(0xff) : new Uint8Array(0)), auth };
}

function randomNode(r: Rand): DevicePathNode {
  if (r.bool(0.6)) {
    const n = r.pick(NODES);
    const data = n.data.slice();
    if (r.bool(0.5) && data.length > 0) mutate(r, data);
    return { type: n.type, subType: n.subType, data: r.bool(0.15) ? reshape(r, data, NODES.map((x) => x.data)) : data };
  }
  return {
    type: r.bool(0.9) ? r.range(1, 5) : r.pick([0, 6, 0x7f, 0xff]),
    subType: r.bool(0.9) ? r.range(0, 32) : r.pick([0x80, 0xff, 1]),
    data: r.bytes(r.pick([0, 1, 2, 4, 6, 8, 12, 16, 20, 24, 27, 40, r.range(0, 64)])),
  };
}

function genPath(r: Rand): Uint8Array {
  if (r.bool(0.5)) {
    const b = r.pick(PATHS).slice();
    mutate(r, b);
    return r.bool(0.3) ? reshape(r, b, PATHS) : b;
  }
  const nodes: DevicePathNode[] = [];
  const n = r.range(1, 7);
  for (let i = 0; i < n; i++) {
    const x = r.bool(0.08) ? { type: 0x7f, subType: 1, data: new Uint8Array(0) } : randomNode(r);
    nodes.push(x.type === 0x7f && x.subType === 0xff ? { ...x, type: 0x7e } : x);
  }
  nodes.push({ type: 0x7f, subType: 0xff, data: r.bool(0.03) ? r.bytes(2) : new Uint8Array(0) });
  const b = encodeDevicePath(nodes);
  if (r.bool(0.3)) mutate(r, b);
  return b;
}

function genOption(r: Rand): Uint8Array {
  if (r.bool(0.55)) {
    const b = r.pick(OPTIONS).slice();
    mutate(r, b);
    return r.bool(0.3) ? reshape(r, b, OPTIONS) : b;
  }
  const desc = new Uint8Array(r.range(0, 20) * 2 + 2);
  for (let i = 0; i + 2 < desc.length; i += 2) desc[i] = r.range(0x20, 0x7e);
  const paths = Array.from({ length: r.range(1, 3) }, () => genPath(r));
  const fpl = concat(...paths);
  const head = new Uint8Array(6);
  const dv = new DataView(head.buffer);
  dv.setUint32(0, r.pick([1, 0, 0x101, 0x109, 9, r.int(2 ** 32)]), true);
  dv.setUint16(4, r.bool(0.85) ? fpl.length : r.int(0x10000), true);
  const optional = r.bool(0.5) ? new Uint8Array(0) : r.bool(0.5) ? guidToBytes(GUIDS.autoCreatedBootOption) : r.bytes(r.range(1, 30));
  return concat(head, desc, fpl, optional);
}

const TOKENS = [
  "PciRoot(", "Pci(", "Scsi(", "Sata(", "NVMe(", "MAC(", "IPv4(", "IPv6(", "Uri(", "HD(", "Fv(", "FvFile(", "VenHw(", "VenMsg(",
  "VenPcAnsi()", "Uart(", "USB(", "AcpiEx(", "AcpiExp(", "Acpi(", "Msg(", "Path(", "MediaPath(", "UsbWwid(", "Dns(", "Wi-Fi(",
  "BBS(", "Ata(", "UartFlowCtrl(", "MemoryMapped(", "GPT", "MBR", "DHCP", "Static", "TCP", "UDP", "DEFAULT", "PNP0A03", "0x",
  "0", "1", "7F", "FF", "12", "-", ":", "::", ".", ",", "/", "(", ")", "\\", "\\EFI", '"', " ", "x", "\u00e9", "\u20ac",
  "7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1", "192.168.0.1", "fe80::1", "00155D000001", "-1", "99999999999999999999",
];

function genText(r: Rand): string {
  if (r.bool(0.5)) {
    // A real path printed, then cut or changed a little.
    let t = devicePathToText(parseDevicePath(r.pick(PATHS)));
    const k = r.range(1, 3);
    for (let i = 0; i < k; i++) {
      const at = r.int(t.length + 1);
      t = r.bool() ? t.slice(0, at) + r.pick(TOKENS) + t.slice(at) : t.slice(0, at) + t.slice(at + r.range(1, 4));
    }
    return t;
  }
  return Array.from({ length: r.range(1, 14) }, () => r.pick(TOKENS)).join("");
}

// ---- the run ---------------------------------------------------------------------------------------

interface Parser {
  readonly name: string;
  readonly share: number;
  /** One input: its check, whether it was generated valid, and a printable form. */
  readonly make: (r: Rand) => { check: () => string | null; valid: boolean; show: () => string };
}

const PARSERS: readonly Parser[] = [
  {
    name: "variable store",
    share: 0.2,
    make: (r) => {
      const g = genStore(r);
      return { check: () => checkStore(g.input), valid: g.valid, show: () => `${g.input.length} bytes, sha ${sha(g.input)}` };
    },
  },
  {
    name: "variable record",
    share: 0.25,
    make: (r) => {
      const g = genRecord(r);
      return { check: () => checkRecord(g.input, g.auth), valid: false, show: () => `${g.auth ? "auth" : "plain"} ${hex(g.input)}` };
    },
  },
  {
    name: "load option",
    share: 0.25,
    make: (r) => {
      const b = genOption(r);
      return { check: () => checkOption(b), valid: false, show: () => hex(b) };
    },
  },
  {
    name: "device path (binary)",
    share: 0.22,
    make: (r) => {
      const b = genPath(r);
      return { check: () => checkPath(b), valid: false, show: () => hex(b) };
    },
  },
  {
    name: "device path (text)",
    share: 0.08,
    make: (r) => {
      const t = genText(r);
      return { check: () => checkText(t), valid: false, show: () => JSON.stringify(t) };
    },
  },
];

function sha(b: Uint8Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  return (h >>> 0).toString(16);
}

interface Tally {
  inputs: number;
  crashes: number;
  refused: number;
  accepted: number;
  shortReads: number;
  valid: number;
  validRefused: number;
  ms: number;
  examples: string[];
}

function main(): number {
  if (REPLAY !== undefined) {
    const [name, idx] = REPLAY.split(":");
    const p = PARSERS.find((x) => x.name.replace(/\W+/g, "-") === name || x.name === name);
    if (p === undefined) throw new Error(`--replay: parsers are ${PARSERS.map((x) => x.name.replace(/\W+/g, "-")).join(", ")}`);
    const input = p.make(new Rand(rngFor(SEED, PARSERS.indexOf(p), Number(idx))));
    console.log(input.show());
    console.log(run(input.check));
    return 0;
  }
  const totals: Tally[] = [];
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  for (const [pi, p] of PARSERS.entries()) {
    const n = Math.round(TOTAL * p.share);
    const t: Tally = { inputs: n, crashes: 0, refused: 0, accepted: 0, shortReads: 0, valid: 0, validRefused: 0, ms: 0, examples: [] };
    const start = performance.now();
    for (let i = 0; i < n; i++) {
      const input = p.make(new Rand(rngFor(SEED, pi, i)));
      const o = run(input.check);
      const tag = `--replay ${p.name.replace(/\W+/g, "-")}:${i}`;
      if (input.valid) t.valid++;
      if (o.kind === "crash") {
        t.crashes++;
        if (t.examples.length < 5) t.examples.push(`crash ${tag}: ${o.error.split("\n").slice(0, 4).join(" | ")}`);
      } else if (o.kind === "refused") {
        t.refused++;
        if (input.valid) {
          t.validRefused++;
          if (t.examples.length < 5) t.examples.push(`valid input refused ${tag}`);
        }
      } else {
        t.accepted++;
        if (o.shortRead !== null) {
          t.shortReads++;
          if (t.examples.length < 5) t.examples.push(`short read ${tag}: ${o.shortRead}`);
        }
      }
    }
    t.ms = performance.now() - start;
    totals.push(t);
  }
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  console.log(
    `\nfuzz-parsers: seed ${SEED}, ${TOTAL} inputs, node ${process.version}, ${wall.toFixed(1)} s wall, ` +
      `${((cpu.user + cpu.system) / 1e6).toFixed(1)} s CPU\n`,
  );
  console.log("| parser | inputs | crashes | refused (typed) | accepted | silent short reads | generated valid | valid refused | time (s) |");
  console.log("|---|---|---|---|---|---|---|---|---|");
  const sum = (k: keyof Omit<Tally, "examples">): number => totals.reduce((a, t) => a + (t[k] as number), 0);
  PARSERS.forEach((p, i) => {
    const t = totals[i]!;
    console.log(`| ${p.name} | ${t.inputs} | ${t.crashes} | ${t.refused} | ${t.accepted} | ${t.shortReads} | ${t.valid} | ${t.validRefused} | ${(t.ms / 1000).toFixed(1)} |`);
  });
  console.log(`| **all** | ${sum("inputs")} | ${sum("crashes")} | ${sum("refused")} | ${sum("accepted")} | ${sum("shortReads")} | ${sum("valid")} | ${sum("validRefused")} | ${(sum("ms") / 1000).toFixed(1)} |`);
  for (const t of totals) for (const e of t.examples) console.log(e);
  return sum("crashes") + sum("shortReads") + sum("validRefused") > 0 ? 1 : 0;
}

process.exitCode = main();
