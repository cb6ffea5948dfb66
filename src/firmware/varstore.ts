/**
 * The OVMF NVRAM flash image (OVMF_VARS*.fd): a firmware volume whose body starts with an
 * edk2 variable store, followed by areas this module never touches (event log,
 * fault-tolerant-write working block and spare).
 *
 *   0x00 EFI_FIRMWARE_VOLUME_HEADER (FileSystemGuid gEfiSystemNvDataFvGuid, "_FVH", block map)
 *   HeaderLength: VARIABLE_STORE_HEADER {Signature GUID, Size, Format 0x5A, State 0xFE}
 *   then variable records, each header 4-byte aligned, up to HeaderLength + Size.
 * Record layout and state bits: MdeModulePkg/Include/Guid/VariableFormat.h; how the driver
 * walks them: MdeModulePkg/Universal/Variable/RuntimeDxe/VariableParsing.c
 * (IsValidVariableHeader, NameSizeOfVariable, GetNextVariablePtr, FindVariableEx).
 *
 * Reading never comes out "silently shorter". edk2's walk stops at the first header without
 * the 0x55AA start mark, so one damaged header hides every variable after it (and edk2's
 * next Reclaim would erase them). Here every byte of the variable region must be accounted
 * for: a record edk2 walks (header, name, data, erased 0xFF alignment padding), or erased
 * 0xFF space after the last record. Anything else is damage, refused with a VarStoreError
 * naming the file and the byte offset; a damaged store is never compacted or rewritten.
 * The one exception is what edk2 itself leaves when the flash write of the newest record
 * was cut short (QEMU killed mid-SetVariable): a last record whose State is still 0xFF (or
 * a lone 0xAA start byte), with only erased bytes after what its header declares. edk2
 * reclaims that at its next start (VariableWriteServiceInitialize); it is reported by
 * `interruptedWrite()` and reclaimed the same way before vmhost's next write.
 * Record states edk2 can leave: each update only clears bits of 0xFF, through
 * VAR_HEADER_VALID_ONLY 0x7F (older drivers), VAR_ADDED 0x3F, then IN_DELETED_TRANSITION
 * (0x3E) and/or DELETED (0x3D, 0x3C). Live are 0x3F and, when no 0x3F copy of the same
 * variable exists, the last 0x3E copy (FindVariableEx). Any other state byte, or two 0x3F
 * copies of one variable, cannot come from edk2 and is damage.
 *
 * Writes work the way the flash does (MdeModulePkg/Universal/Variable/RuntimeDxe): a new
 * record is appended in the erased space and the State bits of the old one are cleared;
 * when the space runs out, the region is compacted ("reclaim") keeping every live variable.
 * Bytes outside the variable region are never changed, and an unchanged store serializes
 * to exactly the bytes it was parsed from.
 */
import { VarStoreError, type VarStoreErrorCode } from "./errors.js";
import { GUIDS, guidToBytes, guidToString, normalizeGuid } from "./guid.js";
import { decodeUcs2, encodeUcs2 } from "./ucs2.js";
import { decodeEfiTime, encodeEfiTime, VARIABLE_ATTRIBUTE as VA, ZERO_EFI_TIME, type EfiTime } from "./variable.js";

/** Record states (VariableFormat.h); updates only ever clear bits. */
export const VAR_STATE = {
  IN_DELETED_TRANSITION: 0xfe,
  DELETED: 0xfd,
  HEADER_VALID_ONLY: 0x7f,
  ADDED: 0x3f,
} as const;
const STATE_ADDED_IN_TRANSITION = VAR_STATE.ADDED & VAR_STATE.IN_DELETED_TRANSITION; // 0x3e
const STATE_UNSET = 0xff;
/** Every State byte edk2's write sequence can leave (see the file comment). */
const REACHABLE_STATES: ReadonlySet<number> = new Set([
  STATE_UNSET,
  VAR_STATE.HEADER_VALID_ONLY,
  VAR_STATE.ADDED,
  STATE_ADDED_IN_TRANSITION,
  VAR_STATE.ADDED & VAR_STATE.DELETED,
  VAR_STATE.ADDED & VAR_STATE.IN_DELETED_TRANSITION & VAR_STATE.DELETED,
]);
const START_ID = 0x55aa;
const STORE_FORMATTED = 0x5a;
const STORE_HEALTHY = 0xfe;
const FV_SIGNATURE = 0x4856465f; // "_FVH"
const FV_MIN_HEADER = 0x38 + 8; // fixed part + one block-map entry; the terminator follows
const STORE_HEADER_SIZE = 28;
const AUTH_HEADER_SIZE = 60;
const PLAIN_HEADER_SIZE = 32;

export interface VarStoreLayout {
  readonly fileSize: number;
  readonly fvLength: number;
  readonly fvHeaderLength: number;
  readonly blockMap: readonly { numBlocks: number; length: number }[];
  /** Offset of VARIABLE_STORE_HEADER. */
  readonly storeOffset: number;
  /** Its Size field (store header included). */
  readonly storeSize: number;
  /** First variable header. */
  readonly variablesStart: number;
  /** End of the variable region (storeOffset + storeSize). */
  readonly variablesEnd: number;
  /** 60-byte authenticated headers (gEfiAuthenticatedVariableGuid) or 32-byte plain ones. */
  readonly authenticated: boolean;
  readonly recordHeaderSize: number;
}

/** One record as found in the region, live or not. */
export interface VariableRecord {
  readonly offset: number;
  readonly state: number;
  readonly attributes: number;
  /** Name without its NUL; decoded per UCS-2 code unit. */
  readonly name: string;
  /** NameSize bytes exactly as stored. */
  readonly nameBytes: Uint8Array;
  readonly guid: string;
  readonly data: Uint8Array;
  readonly monotonicCount: bigint;
  readonly timestamp: EfiTime | null;
  readonly pubKeyIndex: number;
  /** Header + name + data, without the alignment padding. */
  readonly size: number;
}

/** A live variable (the copy edk2 would return). */
export interface UefiVariable {
  readonly name: string;
  readonly guid: string;
  readonly attributes: number;
  readonly data: Uint8Array;
  readonly monotonicCount: bigint;
  readonly timestamp: EfiTime | null;
  readonly pubKeyIndex: number;
  readonly state: number;
  readonly offset: number;
}

export interface SetVariableOptions {
  /** EFI_TIME for the header (time-based authenticated variables). Default: kept or zero. */
  timestamp?: EfiTime;
  monotonicCount?: bigint;
  pubKeyIndex?: number;
}

export interface SetVariableResult {
  /** False when the variable already had these attributes and data (nothing written). */
  readonly changed: boolean;
  /** True when the region was compacted to make room. */
  readonly compacted: boolean;
  /** Offset of the new record, or -1 when nothing was written. */
  readonly offset: number;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function rd16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}
function rd32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}
function rd64(b: Uint8Array, o: number): bigint {
  return (BigInt(rd32(b, o + 4)) << 32n) | BigInt(rd32(b, o));
}
function wr16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}
function wr32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}
function wr64(b: Uint8Array, o: number, v: bigint): void {
  const x = BigInt.asUintN(64, v);
  wr32(b, o, Number(x & 0xffffffffn));
  wr32(b, o + 4, Number(x >> 32n));
}

function isLive(state: number): boolean {
  return state === VAR_STATE.ADDED || state === STATE_ADDED_IN_TRANSITION;
}

function keyOf(guid: string, nameBytes: Uint8Array): string {
  return guid + "/" + Buffer.from(nameBytes.buffer, nameBytes.byteOffset, nameBytes.length).toString("latin1");
}

const hx = (n: number): string => "0x" + n.toString(16).toUpperCase();

/** Throws the typed damage error; `path` names the file when the store came from one. */
function damage(code: VarStoreErrorCode, offset: number | undefined, message: string, path: string | undefined): never {
  throw new VarStoreError(code, message, { ...(path !== undefined ? { path } : {}), ...(offset !== undefined ? { offset } : {}) });
}

/**
 * Validates the firmware volume and store headers (PiFirmwareVolume.h, VariableFormat.h).
 * The volume must span the whole file: OVMF's flash driver re-initializes (erases) a
 * variable volume whose FvLength is not the size it was built for
 * (OvmfPkg/QemuFlashFvbServicesRuntimeDxe/FwBlockService.c, InitializeVariableFvHeader).
 */
function readLayout(buf: Uint8Array, path?: string): VarStoreLayout {
  if (buf.length < FV_MIN_HEADER + 8 + STORE_HEADER_SIZE) {
    damage("TOO_SMALL", undefined, `${buf.length} bytes is too small for a variable store`, path);
  }
  if (rd32(buf, 0x28) !== FV_SIGNATURE) damage("BAD_FV_SIGNATURE", 0x28, "no _FVH firmware volume signature at offset 0x28", path);
  const fsGuid = guidToString(buf, 0x10);
  if (fsGuid !== GUIDS.systemNvDataFv) {
    damage("BAD_FV_GUID", 0x10, `firmware volume FileSystemGuid ${fsGuid} is not gEfiSystemNvDataFvGuid`, path);
  }
  const headerLength = rd16(buf, 0x30);
  if (headerLength < FV_MIN_HEADER + 8 || headerLength % 2 !== 0 || headerLength + STORE_HEADER_SIZE > buf.length) {
    damage("BAD_FV_HEADER_LENGTH", 0x30, `firmware volume HeaderLength ${hx(headerLength)} is invalid`, path);
  }
  let sum = 0;
  for (let i = 0; i < headerLength; i += 2) sum = (sum + rd16(buf, i)) & 0xffff;
  if (sum !== 0) damage("BAD_FV_CHECKSUM", 0x32, `firmware volume header checksum is off by ${hx(sum)}`, path);
  if (buf[0x37] !== 2) damage("BAD_FV_REVISION", 0x37, `firmware volume revision ${buf[0x37]} is not 2`, path);
  const fvLength64 = rd64(buf, 0x20);
  if (fvLength64 !== BigInt(buf.length)) {
    damage(
      "BAD_FV_LENGTH", 0x20,
      `firmware volume length 0x${fvLength64.toString(16)} is not the ${buf.length}-byte size of the image (OVMF would erase such a store)`, path,
    );
  }
  const fvLength = Number(fvLength64);
  const blockMap: { numBlocks: number; length: number }[] = [];
  let covered = 0;
  let o = 0x38;
  for (;;) {
    if (o + 8 > headerLength) damage("BAD_FV_BLOCKMAP", o, "firmware volume block map is not terminated", path);
    const numBlocks = rd32(buf, o);
    const length = rd32(buf, o + 4);
    o += 8;
    if (numBlocks === 0 && length === 0) break;
    blockMap.push({ numBlocks, length });
    covered += numBlocks * length;
  }
  if (covered !== fvLength) {
    damage("BAD_FV_BLOCKMAP", 0x38, `block map covers ${hx(covered)} bytes, volume is ${hx(fvLength)}`, path);
  }
  const storeOffset = headerLength;
  const sig = guidToString(buf, storeOffset);
  let authenticated: boolean;
  if (sig === GUIDS.authenticatedVariable) authenticated = true;
  else if (sig === GUIDS.variable) authenticated = false;
  else damage("BAD_STORE_SIGNATURE", storeOffset, `variable store signature ${sig} is not a known store GUID`, path);
  const storeSize = rd32(buf, storeOffset + 16);
  if (storeSize < STORE_HEADER_SIZE || storeOffset + storeSize > fvLength) {
    damage("BAD_STORE_SIZE", storeOffset + 16, `variable store size ${hx(storeSize)} does not fit the firmware volume`, path);
  }
  if (buf[storeOffset + 20] !== STORE_FORMATTED) {
    damage("STORE_NOT_FORMATTED", storeOffset + 20, "variable store is not formatted (Format != 0x5A)", path);
  }
  if (buf[storeOffset + 21] !== STORE_HEALTHY) {
    damage("STORE_NOT_HEALTHY", storeOffset + 21, "variable store is not healthy (State != 0xFE)", path);
  }
  const variablesStart = align4(storeOffset + STORE_HEADER_SIZE);
  return {
    fileSize: buf.length,
    fvLength,
    fvHeaderLength: headerLength,
    blockMap,
    storeOffset,
    storeSize,
    variablesStart,
    variablesEnd: Math.max(variablesStart, storeOffset + storeSize),
    authenticated,
    recordHeaderSize: authenticated ? AUTH_HEADER_SIZE : PLAIN_HEADER_SIZE,
  };
}

/** Where to read one record: the store's header format and the end of its variable region. */
export interface VariableRecordContext {
  /** 60-byte authenticated headers (true) or 32-byte plain ones. */
  readonly authenticated: boolean;
  /** End of the variable region (exclusive); the record must end before it. Default: the buffer's end. */
  readonly end?: number;
  /** File name for errors. */
  readonly path?: string;
}

/**
 * Decodes the variable record whose header starts at `offset` (VARIABLE_HEADER or
 * AUTHENTICATED_VARIABLE_HEADER, then NameSize bytes of UCS-2 name, then DataSize bytes of
 * data; no padding between them on x86, VariableFormat.h ALIGNMENT 1).
 *
 * Sizes are read as edk2's NameSizeOfVariable/DataSizeOfVariable do: a header whose State is
 * still 0xFF, or with any of Attributes/NameSize/DataSize erased (0xFFFFFFFF), has an empty
 * name and data (`size` is the header alone). The start mark must be 0x55AA.
 * Throws VarStoreError (with the record's offset) when the start mark is wrong, the record
 * runs past `end`, its State is one edk2 cannot write (BAD_STATE), a record that reached
 * VAR_ADDED has erased size fields, or its name is not an even-sized, NUL-terminated UCS-2
 * string without an inner NUL (BAD_NAME: SetVariable cannot write such a name).
 */
export function parseVariableRecord(buf: Uint8Array, offset: number, ctx: VariableRecordContext): VariableRecord {
  const end = Math.min(ctx.end ?? buf.length, buf.length);
  const hs = ctx.authenticated ? AUTH_HEADER_SIZE : PLAIN_HEADER_SIZE;
  const at = `variable record at ${hx(offset)}`;
  if (!Number.isInteger(offset) || offset < 0 || offset + hs > end) {
    damage("BAD_VARIABLE", offset, `${at}: its ${hs}-byte header is cut off by the end of the store at ${hx(end)}`, ctx.path);
  }
  if (rd16(buf, offset) !== START_ID) {
    damage("BAD_VARIABLE", offset, `${at}: start mark ${hx(rd16(buf, offset))} is not 0x55AA`, ctx.path);
  }
  const state = buf[offset + 2]!;
  if (!REACHABLE_STATES.has(state)) {
    damage(
      "BAD_STATE", offset + 2,
      `${at}: State ${hx(state)} is not one edk2 writes (0xFF, 0x7F, 0x3F, 0x3E, 0x3D, 0x3C); the byte was changed by something else`,
      ctx.path,
    );
  }
  const attributes = rd32(buf, offset + 4);
  let monotonicCount = 0n;
  let timestamp: EfiTime | null = null;
  let pubKeyIndex = 0;
  let rawNameSize: number;
  let rawDataSize: number;
  let guidOff: number;
  if (ctx.authenticated) {
    monotonicCount = rd64(buf, offset + 8);
    timestamp = decodeEfiTime(buf, offset + 16);
    pubKeyIndex = rd32(buf, offset + 32);
    rawNameSize = rd32(buf, offset + 36);
    rawDataSize = rd32(buf, offset + 40);
    guidOff = offset + 44;
  } else {
    rawNameSize = rd32(buf, offset + 8);
    rawDataSize = rd32(buf, offset + 12);
    guidOff = offset + 16;
  }
  const erasedField = rawNameSize === 0xffffffff || rawDataSize === 0xffffffff || attributes === 0xffffffff;
  let nameSize = rawNameSize;
  let dataSize = rawDataSize;
  if (state === STATE_UNSET || erasedField) {
    if (state !== STATE_UNSET && state !== VAR_STATE.HEADER_VALID_ONLY) {
      damage("BAD_VARIABLE", offset, `${at}: State ${hx(state)} says it was completely written, yet its size fields are erased`, ctx.path);
    }
    nameSize = 0;
    dataSize = 0;
  }
  const nameOff = offset + hs;
  const dataOff = nameOff + nameSize;
  const recEnd = dataOff + dataSize;
  if (recEnd > end) {
    damage("BAD_VARIABLE", offset, `${at} (NameSize ${nameSize}, DataSize ${dataSize}) runs past the end of the store at ${hx(end)}`, ctx.path);
  }
  // Records that reached VAR_ADDED were written whole by SetVariable, so their names are real
  // names. HEADER_VALID_ONLY records may hold a name that was never finished.
  if ((state & 0xc0) === 0 && !validName(buf, nameOff, nameSize)) {
    damage("BAD_NAME", nameOff, `${at}: its ${nameSize}-byte name is not a NUL-terminated UCS-2 string`, ctx.path);
  }
  const nameLen = nameSize - (nameSize >= 2 && buf[dataOff - 2] === 0 && buf[dataOff - 1] === 0 ? 2 : 0);
  return {
    offset,
    state,
    attributes,
    name: decodeUcs2(buf, nameOff, nameOff + (nameLen & ~1)),
    nameBytes: buf.slice(nameOff, dataOff),
    guid: guidToString(buf, guidOff),
    data: buf.slice(dataOff, recEnd),
    monotonicCount,
    timestamp,
    pubKeyIndex,
    size: recEnd - offset,
  };
}

/** Even size, at least one character, NUL last and nowhere else (what StrSize gives). */
function validName(buf: Uint8Array, off: number, size: number): boolean {
  if (size < 4 || size % 2 !== 0) return false;
  const last = off + size - 2;
  if (buf[last] !== 0 || buf[last + 1] !== 0) return false;
  for (let i = off; i < last; i += 2) if (buf[i] === 0 && buf[i + 1] === 0) return false;
  return true;
}

/**
 * Offset of the first 4-aligned place in [from, to) that holds a whole record header of a
 * variable SetVariable wrote (start mark, a State that reached VAR_ADDED, a valid name, sizes
 * inside [from, to)), or -1. Such a header inside another record's data means that record's
 * size was damaged so that it swallows the records after it (edk2's walk would skip them).
 */
function embeddedHeader(buf: Uint8Array, from: number, to: number, authenticated: boolean): number {
  const hs = authenticated ? AUTH_HEADER_SIZE : PLAIN_HEADER_SIZE;
  for (let o = align4(from); o + hs <= to; o += 4) {
    if (buf[o] !== 0xaa || buf[o + 1] !== 0x55) continue;
    const state = buf[o + 2]!;
    if ((state & 0xc0) !== 0 || !REACHABLE_STATES.has(state)) continue;
    const ns = authenticated ? rd32(buf, o + 36) : rd32(buf, o + 8);
    const ds = authenticated ? rd32(buf, o + 40) : rd32(buf, o + 12);
    if (o + hs + ns + ds > to) continue;
    if (validName(buf, o + hs, ns)) return o;
  }
  return -1;
}

const ERASED_CHUNK = new Uint8Array(0x10000).fill(0xff);

/** First byte in [from, to) that is not 0xFF, or -1 (chunks compared with memcmp, then scanned). */
function firstNotErased(buf: Uint8Array, from: number, to: number): number {
  for (let o = from; o < to; o += ERASED_CHUNK.length) {
    const n = Math.min(ERASED_CHUNK.length, to - o);
    if (Buffer.compare(Buffer.from(buf.buffer, buf.byteOffset + o, n), Buffer.from(ERASED_CHUNK.buffer, 0, n)) === 0) continue;
    for (let i = o; i < o + n; i++) if (buf[i] !== 0xff) return i;
  }
  return -1;
}

/** The bytes of an append the flash never finished (see the file comment). */
export interface InterruptedWrite {
  /** Offset of the unfinished record's header. */
  readonly offset: number;
  /** Bytes from `offset` that belong to it (what its header declares, or the lone start byte). */
  readonly length: number;
}

interface Walk {
  records: VariableRecord[];
  /** Where edk2's walk ends: the next record goes here once the region is clean. */
  end: number;
  interrupted: InterruptedWrite | null;
}

/**
 * Walks the records as edk2 does (GetNextVariablePtr) and accounts for every byte of the
 * region: padding and the space after the last record must be erased (0xFF), except for an
 * interrupted last append. Throws VarStoreError with the offset of the first byte that is
 * not accounted for.
 */
function readRecords(buf: Uint8Array, L: VarStoreLayout, path?: string): Walk {
  const records: VariableRecord[] = [];
  const ctx: VariableRecordContext = { authenticated: L.authenticated, end: L.variablesEnd, ...(path !== undefined ? { path } : {}) };
  const hs = L.recordHeaderSize;
  const end = L.variablesEnd;
  let off = L.variablesStart;
  let interrupted: InterruptedWrite | null = null;
  while (off + 2 <= end && rd16(buf, off) === START_ID) {
    const rec = parseVariableRecord(buf, off, ctx);
    records.push(rec);
    if (rec.state === STATE_UNSET) {
      // State is set last: an append was cut short. If what its header declares fits and only
      // erased bytes follow, it is the newest record, unfinished; edk2 steps over just its
      // header and reclaims the rest at its next start.
      const ns = L.authenticated ? rd32(buf, off + 36) : rd32(buf, off + 8);
      const ds = L.authenticated ? rd32(buf, off + 40) : rd32(buf, off + 12);
      const declared = ns !== 0xffffffff && ds !== 0xffffffff ? off + hs + ns + ds : off + hs;
      if (declared <= end && firstNotErased(buf, declared, end) < 0 && firstNotErased(buf, off + hs, declared) >= 0) {
        interrupted = { offset: off, length: declared - off };
        return { records, end: off + hs, interrupted };
      }
    }
    const recEnd = off + rec.size;
    const swallowed = embeddedHeader(buf, off + hs, recEnd, L.authenticated);
    if (swallowed >= 0) {
      damage(
        "BAD_VARIABLE", off,
        `variable record at ${hx(off)} (${rec.name || "unnamed"}) declares ${rec.size - hs} bytes of name and data that contain another ` +
          `record's header at ${hx(swallowed)}: its size fields are damaged and would hide the records they cover`,
        path,
      );
    }
    const next = align4(recEnd);
    const pad = firstNotErased(buf, recEnd, Math.min(next, end));
    if (pad >= 0) {
      damage(
        "BAD_PADDING", pad,
        `byte ${hx(pad)} in the alignment padding after the variable record at ${hx(off)} is ${hx(buf[pad]!)}, not erased (0xFF)`, path,
      );
    }
    off = next;
  }
  const walkEnd = Math.min(off, end);
  const dirty = firstNotErased(buf, walkEnd, end);
  if (dirty < 0) return { records, end: walkEnd, interrupted };
  // The first byte of a start mark and nothing else: an append cut short after one byte.
  if (dirty === walkEnd && buf[walkEnd] === 0xaa && firstNotErased(buf, walkEnd + 1, end) < 0) {
    return { records, end: walkEnd, interrupted: { offset: walkEnd, length: 1 } };
  }
  const found = walkEnd + 2 <= end ? `${hx(rd16(buf, walkEnd))} where a 0x55AA start mark would be` : "no room for another record";
  const last = records.at(-1);
  damage(
    "UNERASED_FREE_SPACE", dirty,
    `the variable list ends at ${hx(walkEnd)} (${found}${last !== undefined ? `; last record at ${hx(last.offset)}` : "; no record before it"}), ` +
      `but byte ${hx(dirty)} after it is ${hx(buf[dirty]!)}, not erased (0xFF): a damaged record header hides what follows. ` +
      `The store is left as it is; restore it from a copy, or replace it with a firmware template`,
    path,
  );
}

/**
 * Live records (FindVariableEx): per (guid, name) the VAR_ADDED copy, else the last
 * ADDED&IN_DELETED_TRANSITION one. Two VAR_ADDED copies of one variable cannot come from
 * edk2's write sequence (the old copy is marked in transition before the new one is
 * written), so they are damage: which one edk2 would return depends on the order alone.
 */
function pickLive(records: readonly VariableRecord[], path?: string): VariableRecord[] {
  const best = new Map<string, VariableRecord>();
  for (const r of records) {
    if (!isLive(r.state)) continue;
    const k = keyOf(r.guid, r.nameBytes);
    const cur = best.get(k);
    if (cur !== undefined && cur.state === VAR_STATE.ADDED && r.state === VAR_STATE.ADDED) {
      damage(
        "DUPLICATE_VARIABLE", r.offset,
        `variable ${r.name} (${r.guid}) has two live copies, at ${hx(cur.offset)} and ${hx(r.offset)}; edk2 never leaves two`, path,
      );
    }
    if (cur === undefined || r.state === VAR_STATE.ADDED || cur.state !== VAR_STATE.ADDED) best.set(k, r);
  }
  const winners = new Set(best.values());
  return records.filter((r) => winners.has(r));
}

export class VarStore {
  readonly layout: VarStoreLayout;
  #buf: Uint8Array;
  #records: VariableRecord[];
  #live: VariableRecord[];
  #byKey: Map<string, VariableRecord>;
  #end: number;
  #interrupted: InterruptedWrite | null;
  /** The file the store was read from, for error messages. */
  readonly path: string | undefined;

  /** Use parseVarStore(). Takes `buf` as it is (no copy). */
  constructor(buf: Uint8Array, path?: string) {
    this.path = path;
    this.layout = readLayout(buf, path);
    this.#buf = buf;
    const walk = readRecords(buf, this.layout, path);
    this.#records = walk.records;
    this.#end = walk.end;
    this.#interrupted = walk.interrupted;
    this.#live = pickLive(walk.records, path);
    this.#byKey = new Map(this.#live.map((r) => [keyOf(r.guid, r.nameBytes), r]));
  }

  /**
   * The newest record when its flash write was cut short (State still 0xFF, see the file
   * comment), else null. It holds no variable; OVMF reclaims it at its next start and the
   * next set() here compacts the region first, as edk2 would.
   */
  interruptedWrite(): InterruptedWrite | null {
    return this.#interrupted;
  }

  /** Every record in the region, dead copies included, in store order. */
  records(): readonly VariableRecord[] {
    return this.#records;
  }

  /** Live variables in store order. */
  list(): UefiVariable[] {
    return this.#live.map(toVariable);
  }

  get(name: string, guid: string): UefiVariable | undefined {
    const r = this.#find(encodeName(name), normalizeGuid(guid));
    return r === undefined ? undefined : toVariable(r);
  }

  /** Bytes still erased after the last record (after an interrupted write's bytes, if any). */
  freeBytes(): number {
    const i = this.#interrupted;
    return this.layout.variablesEnd - (i === null ? this.#end : Math.min(align4(i.offset + i.length), this.layout.variablesEnd));
  }

  /** Bytes the live variables would occupy after compaction. */
  liveBytes(): number {
    return this.#live.reduce((n, r) => n + align4(r.size), 0);
  }

  /**
   * Sets a variable as SetVariable() would end up in flash. Empty data (without APPEND_WRITE)
   * or no access attributes delete it. APPEND_WRITE appends to the current data.
   * Throws VarStoreError STORE_FULL, leaving the store unchanged, when even a compacted
   * region cannot hold it.
   */
  set(name: string, guid: string, attributes: number, data: Uint8Array, options: SetVariableOptions = {}): SetVariableResult {
    const nameBytes = encodeName(name);
    const g = normalizeGuid(guid);
    const append = (attributes & VA.APPEND_WRITE) !== 0;
    const attrs = (attributes & ~VA.APPEND_WRITE) >>> 0;
    if (!append && (data.length === 0 || (attrs & (VA.BOOTSERVICE_ACCESS | VA.RUNTIME_ACCESS)) === 0)) {
      const deleted = this.delete(name, g);
      return { changed: deleted, compacted: false, offset: -1 };
    }
    if ((attrs & VA.NON_VOLATILE) === 0) {
      throw new VarStoreError("BAD_ATTRIBUTES", `${name}: only non-volatile variables live in the flash store`);
    }
    if ((attrs & VA.RUNTIME_ACCESS) !== 0 && (attrs & VA.BOOTSERVICE_ACCESS) === 0) {
      throw new VarStoreError("BAD_ATTRIBUTES", `${name}: RUNTIME_ACCESS requires BOOTSERVICE_ACCESS`);
    }
    // Appending nothing changes nothing, even for a variable that does not exist (edk2).
    if (append && data.length === 0) return { changed: false, compacted: false, offset: -1 };
    const old = this.#find(nameBytes, g);
    let payload = data;
    if (append && old !== undefined) {
      payload = new Uint8Array(old.data.length + data.length);
      payload.set(old.data);
      payload.set(data, old.data.length);
    }
    if (
      old !== undefined && old.attributes === attrs && bytesEqual(old.data, payload) && old.state === VAR_STATE.ADDED &&
      options.timestamp === undefined && options.monotonicCount === undefined && options.pubKeyIndex === undefined
    ) {
      return { changed: false, compacted: false, offset: -1 };
    }
    const keepTime = (attrs & VA.TIME_BASED_AUTHENTICATED_WRITE_ACCESS) !== 0 ? old?.timestamp ?? null : null;
    const record = this.#encodeRecord(nameBytes, g, attrs, payload, {
      timestamp: options.timestamp ?? keepTime ?? ZERO_EFI_TIME,
      monotonicCount: options.monotonicCount ?? 0n,
      pubKeyIndex: options.pubKeyIndex ?? 0,
    });
    const key = keyOf(g, nameBytes);
    let compacted = false;
    if (this.#interrupted !== null || this.#end + record.length > this.layout.variablesEnd) {
      const fits = this.liveBytes() - (old !== undefined ? this.#liveBytesOf(key) : 0) + record.length;
      if (this.layout.variablesStart + fits > this.layout.variablesEnd) {
        throw new VarStoreError(
          "STORE_FULL",
          `no room for ${name} (${record.length} bytes): live variables need ${fits} of ${this.layout.variablesEnd - this.layout.variablesStart} bytes`,
          this.path !== undefined ? { path: this.path } : {},
        );
      }
      this.#compact(key);
      compacted = true;
    } else {
      // Flash order: the old copy goes IN_DELETED_TRANSITION, the new one is written, then the
      // old one is marked DELETED. Only the final bits matter in a file.
      this.#markKey(key, VAR_STATE.IN_DELETED_TRANSITION & VAR_STATE.DELETED);
    }
    const offset = this.#end;
    this.#buf.set(record, offset);
    this.#reindex();
    return { changed: true, compacted, offset };
  }

  /** Marks every live copy DELETED. Returns false when there was none. */
  delete(name: string, guid: string): boolean {
    const key = keyOf(normalizeGuid(guid), encodeName(name));
    const n = this.#markKey(key, VAR_STATE.DELETED);
    if (n > 0) this.#reindex();
    return n > 0;
  }

  /** Rewrites the region with only the live variables (edk2 Reclaim). */
  compact(): void {
    this.#compact(null);
    this.#reindex();
  }

  /** The whole image, including the untouched areas after the variable region. */
  toBuffer(): Uint8Array {
    return this.#buf.slice();
  }

  #find(nameBytes: Uint8Array, guid: string): VariableRecord | undefined {
    return this.#byKey.get(keyOf(guid, nameBytes));
  }

  #liveBytesOf(key: string): number {
    return this.#live.filter((r) => keyOf(r.guid, r.nameBytes) === key).reduce((n, r) => n + align4(r.size), 0);
  }

  #markKey(key: string, mask: number): number {
    let n = 0;
    for (const r of this.#records) {
      if (isLive(r.state) && keyOf(r.guid, r.nameBytes) === key) {
        this.#buf[r.offset + 2] = r.state & mask;
        n++;
      }
    }
    return n;
  }

  /** Live records first as ADDED then IN_TRANSITION ones (Reclaim's order), rest erased. */
  #compact(dropKey: string | null): void {
    const keep = this.#live.filter((r) => dropKey === null || keyOf(r.guid, r.nameBytes) !== dropKey);
    const ordered = [...keep.filter((r) => r.state === VAR_STATE.ADDED), ...keep.filter((r) => r.state !== VAR_STATE.ADDED)];
    const copies = ordered.map((r) => this.#buf.slice(r.offset, r.offset + r.size));
    const L = this.layout;
    this.#buf.fill(0xff, L.variablesStart, L.variablesEnd);
    let off = L.variablesStart;
    for (const c of copies) {
      c[2] = VAR_STATE.ADDED;
      this.#buf.set(c, off);
      off = align4(off + c.length);
    }
    this.#end = Math.min(off, L.variablesEnd);
  }

  #encodeRecord(
    nameBytes: Uint8Array, guid: string, attrs: number, data: Uint8Array,
    h: { timestamp: EfiTime; monotonicCount: bigint; pubKeyIndex: number },
  ): Uint8Array {
    const hs = this.layout.recordHeaderSize;
    const rec = new Uint8Array(hs + nameBytes.length + data.length);
    wr16(rec, 0, START_ID);
    rec[2] = VAR_STATE.ADDED;
    rec[3] = 0;
    wr32(rec, 4, attrs);
    if (this.layout.authenticated) {
      wr64(rec, 8, h.monotonicCount);
      rec.set(encodeEfiTime(h.timestamp), 16);
      wr32(rec, 32, h.pubKeyIndex >>> 0);
      wr32(rec, 36, nameBytes.length);
      wr32(rec, 40, data.length);
      rec.set(guidToBytes(guid), 44);
    } else {
      wr32(rec, 8, nameBytes.length);
      wr32(rec, 12, data.length);
      rec.set(guidToBytes(guid), 16);
    }
    rec.set(nameBytes, hs);
    rec.set(data, hs + nameBytes.length);
    return rec;
  }

  #reindex(): void {
    const walk = readRecords(this.#buf, this.layout, this.path);
    this.#records = walk.records;
    this.#end = walk.end;
    this.#interrupted = walk.interrupted;
    this.#live = pickLive(walk.records, this.path);
    this.#byKey = new Map(this.#live.map((r) => [keyOf(r.guid, r.nameBytes), r]));
  }
}

function encodeName(name: string): Uint8Array {
  if (name.length === 0) throw new VarStoreError("BAD_NAME", "variable name is empty");
  if (name.includes("\0")) throw new VarStoreError("BAD_NAME", "variable name contains NUL");
  return encodeUcs2(name, true);
}

function toVariable(r: VariableRecord): UefiVariable {
  return {
    name: r.name,
    guid: r.guid,
    attributes: r.attributes,
    data: r.data.slice(),
    monotonicCount: r.monotonicCount,
    timestamp: r.timestamp,
    pubKeyIndex: r.pubKeyIndex,
    state: r.state,
    offset: r.offset,
  };
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Parses an OVMF variable store image (a copy is taken; `buf` is not kept). Throws
 * VarStoreError (code, `offset`, and `path` when given) for anything damaged; see the file
 * comment for what counts. `path` only names the file in errors.
 */
export function parseVarStore(buf: Uint8Array, options: { path?: string } = {}): VarStore {
  return new VarStore(new Uint8Array(buf), options.path);
}
