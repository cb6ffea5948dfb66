/**
 * Field codecs for device-path node layouts and the printf/strtoi helpers the node table
 * uses. Readers never throw: they return null when the bytes do not fit the layout.
 */
import { DevicePathError } from "../errors.js";
import { guidToBytes, guidToString, isGuid } from "../guid.js";
import { decodeUcs2, encodeUcs2 } from "../ucs2.js";

export interface FieldCodec<T> {
  /** Value at `off` and the offset after it, or null when it does not fit. */
  read(d: Uint8Array, off: number): readonly [T, number] | null;
  write(v: T): Uint8Array;
}

export type Layout = Record<string, FieldCodec<unknown>>;
export type FieldsOf<L> = { [K in keyof L]: L[K] extends FieldCodec<infer T> ? T : never };

function uint(bytes: number): FieldCodec<number> {
  return {
    read(d, off) {
      if (off + bytes > d.length) return null;
      let v = 0;
      for (let i = bytes - 1; i >= 0; i--) v = v * 256 + d[off + i]!;
      return [v, off + bytes];
    },
    write(v) {
      const out = new Uint8Array(bytes);
      let x = Math.trunc(v);
      for (let i = 0; i < bytes; i++) {
        out[i] = x & 0xff;
        x = Math.floor(x / 256);
      }
      return out;
    },
  };
}

export const u8 = uint(1);
export const u16 = uint(2);
export const u32 = uint(4);

export const u64: FieldCodec<bigint> = {
  read(d, off) {
    if (off + 8 > d.length) return null;
    let v = 0n;
    for (let i = 7; i >= 0; i--) v = (v << 8n) | BigInt(d[off + i]!);
    return [v, off + 8];
  },
  write(v) {
    const out = new Uint8Array(8);
    let x = BigInt.asUintN(64, v);
    for (let i = 0; i < 8; i++) {
      out[i] = Number(x & 0xffn);
      x >>= 8n;
    }
    return out;
  },
};

export const guid: FieldCodec<string> = {
  read(d, off) {
    if (off + 16 > d.length) return null;
    return [guidToString(d, off), off + 16];
  },
  write(v) {
    return guidToBytes(v);
  },
};

export function bytes(n: number): FieldCodec<Uint8Array> {
  return {
    read(d, off) {
      if (off + n > d.length) return null;
      return [d.slice(off, off + n), off + n];
    },
    write(v) {
      const out = new Uint8Array(n);
      out.set(v.subarray(0, n));
      return out;
    },
  };
}

/** Everything left in the node. */
export const restBytes: FieldCodec<Uint8Array> = {
  read(d, off) {
    return off <= d.length ? [d.slice(off), d.length] : null;
  },
  write(v) {
    return v.slice();
  },
};

/** Everything left, as 8-bit characters (latin1, lossless). */
export const restAscii: FieldCodec<string> = {
  read(d, off) {
    if (off > d.length) return null;
    let s = "";
    for (let i = off; i < d.length; i++) s += String.fromCharCode(d[i]!);
    return [s, d.length];
  },
  write(v) {
    return latin1(v);
  },
};

/** A NUL-terminated 8-bit string (the NUL is consumed, not part of the value). */
export const asciiz: FieldCodec<string> = {
  read(d, off) {
    let s = "";
    for (let i = off; i < d.length; i++) {
      if (d[i] === 0) return [s, i + 1];
      s += String.fromCharCode(d[i]!);
    }
    return null;
  },
  write(v) {
    const b = new Uint8Array(v.length + 1);
    b.set(latin1(v));
    return b;
  },
};

/** Everything left, as UCS-2 code units (NULs included); odd lengths do not fit. */
export const restUcs2: FieldCodec<string> = {
  read(d, off) {
    if (off > d.length || (d.length - off) % 2 !== 0) return null;
    return [decodeUcs2(d, off, d.length), d.length];
  },
  write(v) {
    return encodeUcs2(v, false);
  },
};

/** Everything left, as UINT32s; a length that is not a multiple of 4 does not fit. */
export const restU32: FieldCodec<number[]> = {
  read(d, off) {
    if (off > d.length || (d.length - off) % 4 !== 0) return null;
    const out: number[] = [];
    for (let i = off; i < d.length; i += 4) out.push((d[i]! | (d[i + 1]! << 8) | (d[i + 2]! << 16) | (d[i + 3]! << 24)) >>> 0);
    return [out, d.length];
  },
  write(v) {
    const out = new Uint8Array(v.length * 4);
    v.forEach((x, i) => {
      out[i * 4] = x & 0xff;
      out[i * 4 + 1] = (x >>> 8) & 0xff;
      out[i * 4 + 2] = (x >>> 16) & 0xff;
      out[i * 4 + 3] = (x >>> 24) & 0xff;
    });
    return out;
  },
};

export function latin1(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

/** Decodes a whole node body with a layout; null unless the layout consumes it exactly. */
export function decodeLayout<L extends Layout>(layout: L, data: Uint8Array): FieldsOf<L> | null {
  const out: Record<string, unknown> = {};
  let off = 0;
  for (const key of Object.keys(layout)) {
    const r = layout[key]!.read(data, off);
    if (r === null) return null;
    out[key] = r[0];
    off = r[1];
  }
  return off === data.length ? (out as FieldsOf<L>) : null;
}

export function encodeLayout<L extends Layout>(layout: L, fields: FieldsOf<L>): Uint8Array {
  const parts: Uint8Array[] = [];
  let n = 0;
  const rec = fields as Record<string, unknown>;
  for (const key of Object.keys(layout)) {
    const p = layout[key]!.write(rec[key]);
    parts.push(p);
    n += p.length;
  }
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Printing as edk2's PrintLib does: %x is uppercase hex, %d is signed 32-bit, %g a GUID in
// uppercase.

export function hx(v: number | bigint): string {
  return "0x" + v.toString(16).toUpperCase();
}

export function hex2(b: number): string {
  return (b < 16 ? "0" : "") + b.toString(16).toUpperCase();
}

export function hexBytes(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += hex2(x);
  return s;
}

/** %d of a UINT32/INT32 argument. */
export function dec32(v: number): string {
  return String(v | 0);
}

/** %ld of a UINT64 argument (signed 64-bit). */
export function dec64(v: bigint): string {
  return BigInt.asIntN(64, v).toString();
}

export function guidUpper(g: string): string {
  return g.toUpperCase();
}

export function ipv4Text(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

export function ipv6Text(b: Uint8Array): string {
  const g: string[] = [];
  for (let i = 0; i < 16; i += 2) g.push(hex2(b[i]!) + hex2(b[i + 1]!));
  return g.join(":");
}

/** Characters of a CHAR8 string up to its first NUL (how %a prints). */
export function cstr(s: string): string {
  const i = s.indexOf("\0");
  return i < 0 ? s : s.slice(0, i);
}

// ---------------------------------------------------------------------------------------
// Parsing arguments as edk2's DevicePathFromText does (Strtoi: "0x.." is hex, otherwise
// decimal), but strictly: malformed or out-of-range numbers are errors, not zero.

function bad(what: string, arg: string): DevicePathError {
  return new DevicePathError("BAD_ARGUMENT", `bad ${what}: ${JSON.stringify(arg.slice(0, 80))}`);
}

export function parseBig(arg: string, bits: number, what = "number"): bigint {
  const s = arg.trim();
  if (s === "") return 0n;
  let v: bigint;
  if (/^-?[0-9]+$/.test(s)) v = BigInt(s);
  else if (/^0[xX][0-9a-fA-F]+$/.test(s)) v = BigInt(s);
  else throw bad(what, arg);
  if (v < 0n) {
    // %d/%ld print large unsigned values as negative numbers; take them back.
    if (v < -(1n << BigInt(bits - 1))) throw bad(what, arg);
    v = BigInt.asUintN(bits, v);
  }
  if (v >= 1n << BigInt(bits)) throw bad(what, arg);
  return v;
}

export function parseNum(arg: string, bits: 8 | 16 | 32, what = "number"): number {
  return Number(parseBig(arg, bits, what));
}

export function parseGuidArg(arg: string): string {
  const s = arg.trim();
  if (!isGuid(s)) throw bad("GUID", arg);
  return s.toLowerCase();
}

/** Hex digits (optionally 0x-prefixed, ':' or '-' separated) to bytes. */
export function parseHexBytes(arg: string, what = "hex data"): Uint8Array {
  let s = arg.trim().replace(/^0[xX]/, "");
  if (/[:-]/.test(s)) s = s.replace(/[:-]/g, "");
  if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) throw bad(what, arg);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Fixed-size byte field from hex, zero-padded on the right. */
export function parseHexFixed(arg: string, n: number, what = "hex data"): Uint8Array {
  const b = parseHexBytes(arg, what);
  if (b.length > n) throw bad(what, arg);
  const out = new Uint8Array(n);
  out.set(b);
  return out;
}

export function parseIpv4(arg: string): Uint8Array {
  const s = arg.trim();
  const out = new Uint8Array(4);
  if (s === "") return out;
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (m === null) throw bad("IPv4 address", arg);
  for (let i = 0; i < 4; i++) {
    const v = Number(m[i + 1]);
    if (v > 255) throw bad("IPv4 address", arg);
    out[i] = v;
  }
  return out;
}

export function parseIpv6(arg: string): Uint8Array {
  const s = arg.trim();
  const out = new Uint8Array(16);
  if (s === "") return out;
  // A trailing dotted quad stands for the last two groups (::ffff:1.2.3.4).
  let t = s;
  const quad = /^(.*:)(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/.exec(s);
  if (quad !== null) {
    const v4 = parseIpv4(quad[2]!);
    t = `${quad[1]!}${((v4[0]! << 8) | v4[1]!).toString(16)}:${((v4[2]! << 8) | v4[3]!).toString(16)}`;
  }
  const halves = t.split("::");
  if (halves.length > 2) throw bad("IPv6 address", arg);
  const groups = (h: string): number[] => {
    if (h === "") return [];
    return h.split(":").map((g) => {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw bad("IPv6 address", arg);
      return parseInt(g, 16);
    });
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (halves.length === 1 ? head.length !== 8 : head.length + tail.length > 7) throw bad("IPv6 address", arg);
  const all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  all.forEach((g, i) => {
    out[i * 2] = g >> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  return out;
}

/** Characters of a text argument as CHAR8s; anything above 0xFF is an error. */
export function asciiArg(arg: string, what = "text"): string {
  for (let i = 0; i < arg.length; i++) if (arg.charCodeAt(i) > 0xff) throw bad(what, arg);
  return arg;
}
