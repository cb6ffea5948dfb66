/**
 * The OVMF NVRAM flash image (OVMF_VARS*.fd): a firmware volume whose body starts with an
 * edk2 variable store, followed by areas this module never touches (event log,
 * fault-tolerant-write working block and spare).
 *
 *   0x00 EFI_FIRMWARE_VOLUME_HEADER (FileSystemGuid gEfiSystemNvDataFvGuid, "_FVH", block map)
 *   HeaderLength: VARIABLE_STORE_HEADER {Signature GUID, Size, Format 0x5A, State 0xFE}
 *   then variable records, each header 4-byte aligned, up to HeaderLength + Size.
 *
 * Writes work the way the flash does (MdeModulePkg/Universal/Variable/RuntimeDxe): a new
 * record is appended in the erased space and the State bits of the old one are cleared;
 * when the space runs out, the region is compacted ("reclaim") keeping every live variable.
 * Bytes outside the variable region are never changed, and an unchanged store serializes
 * to exactly the bytes it was parsed from.
 */
import { VarStoreError } from "./errors.js";
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
  let k = guid + "/";
  for (const b of nameBytes) k += String.fromCharCode(b);
  return k;
}

/** Validates the firmware volume and store headers. */
function readLayout(buf: Uint8Array): VarStoreLayout {
  if (buf.length < FV_MIN_HEADER + 8 + STORE_HEADER_SIZE) {
    throw new VarStoreError("TOO_SMALL", `${buf.length} bytes is too small for a variable store`);
  }
  if (rd32(buf, 0x28) !== FV_SIGNATURE) throw new VarStoreError("BAD_FV_SIGNATURE", "no _FVH firmware volume signature at offset 0x28");
  const fsGuid = guidToString(buf, 0x10);
  if (fsGuid !== GUIDS.systemNvDataFv) {
    throw new VarStoreError("BAD_FV_GUID", `firmware volume FileSystemGuid ${fsGuid} is not gEfiSystemNvDataFvGuid`);
  }
  const headerLength = rd16(buf, 0x30);
  if (headerLength < FV_MIN_HEADER + 8 || headerLength % 2 !== 0 || headerLength + STORE_HEADER_SIZE > buf.length) {
    throw new VarStoreError("BAD_FV_HEADER_LENGTH", `firmware volume HeaderLength 0x${headerLength.toString(16)} is invalid`);
  }
  let sum = 0;
  for (let i = 0; i < headerLength; i += 2) sum = (sum + rd16(buf, i)) & 0xffff;
  if (sum !== 0) throw new VarStoreError("BAD_FV_CHECKSUM", `firmware volume header checksum is off by 0x${sum.toString(16)}`);
  if (buf[0x37] !== 2) throw new VarStoreError("BAD_FV_REVISION", `firmware volume revision ${buf[0x37]} is not 2`);
  const fvLength64 = rd64(buf, 0x20);
  if (fvLength64 > BigInt(buf.length) || fvLength64 < BigInt(headerLength + STORE_HEADER_SIZE)) {
    throw new VarStoreError("BAD_FV_LENGTH", `firmware volume length 0x${fvLength64.toString(16)} does not fit the ${buf.length}-byte image`);
  }
  const fvLength = Number(fvLength64);
  const blockMap: { numBlocks: number; length: number }[] = [];
  let covered = 0;
  let o = 0x38;
  for (;;) {
    if (o + 8 > headerLength) throw new VarStoreError("BAD_FV_BLOCKMAP", "firmware volume block map is not terminated");
    const numBlocks = rd32(buf, o);
    const length = rd32(buf, o + 4);
    o += 8;
    if (numBlocks === 0 && length === 0) break;
    blockMap.push({ numBlocks, length });
    covered += numBlocks * length;
  }
  if (covered !== fvLength) {
    throw new VarStoreError("BAD_FV_BLOCKMAP", `block map covers 0x${covered.toString(16)} bytes, volume is 0x${fvLength.toString(16)}`);
  }
  const storeOffset = headerLength;
  const sig = guidToString(buf, storeOffset);
  let authenticated: boolean;
  if (sig === GUIDS.authenticatedVariable) authenticated = true;
  else if (sig === GUIDS.variable) authenticated = false;
  else throw new VarStoreError("BAD_STORE_SIGNATURE", `variable store signature ${sig} is not a known store GUID`);
  const storeSize = rd32(buf, storeOffset + 16);
  if (storeSize < STORE_HEADER_SIZE || storeOffset + storeSize > fvLength) {
    throw new VarStoreError("BAD_STORE_SIZE", `variable store size 0x${storeSize.toString(16)} does not fit the firmware volume`);
  }
  if (buf[storeOffset + 20] !== STORE_FORMATTED) throw new VarStoreError("STORE_NOT_FORMATTED", "variable store is not formatted (Format != 0x5A)");
  if (buf[storeOffset + 21] !== STORE_HEALTHY) throw new VarStoreError("STORE_NOT_HEALTHY", "variable store is not healthy (State != 0xFE)");
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

/** Walks the records the way edk2 does; returns them and the offset where appending starts. */
function readRecords(buf: Uint8Array, L: VarStoreLayout): { records: VariableRecord[]; end: number } {
  const records: VariableRecord[] = [];
  const hs = L.recordHeaderSize;
  let off = L.variablesStart;
  while (off + hs <= L.variablesEnd && rd16(buf, off) === START_ID) {
    const state = buf[off + 2]!;
    const attributes = rd32(buf, off + 4);
    let monotonicCount = 0n;
    let timestamp: EfiTime | null = null;
    let pubKeyIndex = 0;
    let nameSize: number;
    let dataSize: number;
    let guidOff: number;
    if (L.authenticated) {
      monotonicCount = rd64(buf, off + 8);
      timestamp = decodeEfiTime(buf, off + 16);
      pubKeyIndex = rd32(buf, off + 32);
      nameSize = rd32(buf, off + 36);
      dataSize = rd32(buf, off + 40);
      guidOff = off + 44;
    } else {
      nameSize = rd32(buf, off + 8);
      dataSize = rd32(buf, off + 12);
      guidOff = off + 16;
    }
    // edk2 (NameSizeOfVariable/DataSizeOfVariable) reads a half-written header as empty.
    if (state === 0xff || nameSize === 0xffffffff || dataSize === 0xffffffff || attributes === 0xffffffff) {
      nameSize = 0;
      dataSize = 0;
    }
    const nameOff = off + hs;
    const dataOff = nameOff + nameSize;
    const recEnd = dataOff + dataSize;
    if (recEnd > L.variablesEnd) {
      throw new VarStoreError(
        "BAD_VARIABLE",
        `variable record at 0x${off.toString(16)} (NameSize ${nameSize}, DataSize ${dataSize}) runs past the end of the store`,
      );
    }
    const nameBytes = buf.slice(nameOff, dataOff);
    const nameLen = nameSize - (nameSize >= 2 && buf[dataOff - 2] === 0 && buf[dataOff - 1] === 0 ? 2 : 0);
    records.push({
      offset: off,
      state,
      attributes,
      name: decodeUcs2(buf, nameOff, nameOff + (nameLen & ~1)),
      nameBytes,
      guid: guidToString(buf, guidOff),
      data: buf.slice(dataOff, recEnd),
      monotonicCount,
      timestamp,
      pubKeyIndex,
      size: recEnd - off,
    });
    off = align4(recEnd);
  }
  return { records, end: Math.min(off, L.variablesEnd) };
}

/** Winners: per (guid, name) the newest ADDED copy, else the newest ADDED|IN_TRANSITION one. */
function pickLive(records: readonly VariableRecord[]): VariableRecord[] {
  const best = new Map<string, VariableRecord>();
  for (const r of records) {
    if (!isLive(r.state)) continue;
    const k = keyOf(r.guid, r.nameBytes);
    const cur = best.get(k);
    if (cur === undefined || r.state === VAR_STATE.ADDED || cur.state !== VAR_STATE.ADDED) best.set(k, r);
  }
  return records.filter((r) => best.get(keyOf(r.guid, r.nameBytes)) === r);
}

export class VarStore {
  readonly layout: VarStoreLayout;
  #buf: Uint8Array;
  #records: VariableRecord[];
  #live: VariableRecord[];
  #byKey: Map<string, VariableRecord>;
  #end: number;

  /** Use parseVarStore(). */
  constructor(buf: Uint8Array) {
    this.layout = readLayout(buf);
    this.#buf = buf;
    const { records, end } = readRecords(buf, this.layout);
    this.#records = records;
    this.#end = end;
    this.#live = pickLive(records);
    this.#byKey = new Map(this.#live.map((r) => [keyOf(r.guid, r.nameBytes), r]));
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

  /** Bytes still erased after the last record. */
  freeBytes(): number {
    return this.layout.variablesEnd - this.#end;
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
    if (!this.#freeAreaErased() || this.#end + record.length > this.layout.variablesEnd) {
      const fits = this.liveBytes() - (old !== undefined ? this.#liveBytesOf(key) : 0) + record.length;
      if (this.layout.variablesStart + fits > this.layout.variablesEnd) {
        throw new VarStoreError(
          "STORE_FULL",
          `no room for ${name} (${record.length} bytes): live variables need ${fits} of ${this.layout.variablesEnd - this.layout.variablesStart} bytes`,
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

  #freeAreaErased(): boolean {
    const b = this.#buf;
    for (let i = this.#end; i < this.layout.variablesEnd; i++) if (b[i] !== 0xff) return false;
    return true;
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
    const { records, end } = readRecords(this.#buf, this.layout);
    this.#records = records;
    this.#end = end;
    this.#live = pickLive(records);
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

/** Parses an OVMF variable store image (a copy is taken; `buf` is not kept). */
export function parseVarStore(buf: Uint8Array): VarStore {
  return new VarStore(Uint8Array.from(buf));
}
