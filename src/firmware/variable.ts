/**
 * UEFI variable attributes and EFI_TIME (MdePkg/Include/Uefi/UefiMultiPhase.h, UefiSpec.h).
 */

export const VARIABLE_ATTRIBUTE = {
  NON_VOLATILE: 0x1,
  BOOTSERVICE_ACCESS: 0x2,
  RUNTIME_ACCESS: 0x4,
  HARDWARE_ERROR_RECORD: 0x8,
  /** Deprecated by UEFI 2.4; still a valid bit in old stores. */
  AUTHENTICATED_WRITE_ACCESS: 0x10,
  TIME_BASED_AUTHENTICATED_WRITE_ACCESS: 0x20,
  APPEND_WRITE: 0x40,
  ENHANCED_AUTHENTICATED_ACCESS: 0x80,
} as const;

/** NV|BS|RT: what Boot####, BootOrder and BootNext carry. */
export const ATTRS_NV_BS_RT = 0x7;

const ATTRIBUTE_NAMES: readonly [number, string][] = [
  [0x1, "NV"],
  [0x2, "BS"],
  [0x4, "RT"],
  [0x8, "HW_ERR"],
  [0x10, "AUTH_WRITE"],
  [0x20, "TIME_AUTH"],
  [0x40, "APPEND"],
  [0x80, "ENHANCED_AUTH"],
];

/** "NV|BS|RT" (plus 0x... for unknown bits). */
export function formatAttributes(attributes: number): string {
  const parts: string[] = [];
  let rest = attributes >>> 0;
  for (const [bit, name] of ATTRIBUTE_NAMES) {
    if (rest & bit) {
      parts.push(name);
      rest &= ~bit;
    }
  }
  if (rest !== 0) parts.push("0x" + (rest >>> 0).toString(16));
  return parts.length > 0 ? parts.join("|") : "0";
}

/** EFI_TIME, 16 bytes on disk. */
export interface EfiTime {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
  pad1: number;
  nanosecond: number;
  timeZone: number;
  daylight: number;
  pad2: number;
}

export const EFI_TIME_SIZE = 16;

export function decodeEfiTime(bytes: Uint8Array, offset = 0): EfiTime {
  const dv = new DataView(bytes.buffer, bytes.byteOffset + offset, EFI_TIME_SIZE);
  return {
    year: dv.getUint16(0, true),
    month: dv.getUint8(2),
    day: dv.getUint8(3),
    hour: dv.getUint8(4),
    minute: dv.getUint8(5),
    second: dv.getUint8(6),
    pad1: dv.getUint8(7),
    nanosecond: dv.getUint32(8, true),
    timeZone: dv.getInt16(12, true),
    daylight: dv.getUint8(14),
    pad2: dv.getUint8(15),
  };
}

export function encodeEfiTime(t: EfiTime): Uint8Array {
  const out = new Uint8Array(EFI_TIME_SIZE);
  const dv = new DataView(out.buffer);
  dv.setUint16(0, t.year & 0xffff, true);
  dv.setUint8(2, t.month & 0xff);
  dv.setUint8(3, t.day & 0xff);
  dv.setUint8(4, t.hour & 0xff);
  dv.setUint8(5, t.minute & 0xff);
  dv.setUint8(6, t.second & 0xff);
  dv.setUint8(7, t.pad1 & 0xff);
  dv.setUint32(8, t.nanosecond >>> 0, true);
  dv.setInt16(12, t.timeZone, true);
  dv.setUint8(14, t.daylight & 0xff);
  dv.setUint8(15, t.pad2 & 0xff);
  return out;
}

/** EFI_TIME of a JS date in UTC with EFI_UNSPECIFIED_TIMEZONE, as authenticated writes use. */
export function efiTimeFromDate(d: Date): EfiTime {
  return {
    year: d.getUTCFullYear(),
    month: d.getUTCMonth() + 1,
    day: d.getUTCDate(),
    hour: d.getUTCHours(),
    minute: d.getUTCMinutes(),
    second: d.getUTCSeconds(),
    pad1: 0,
    nanosecond: 0,
    timeZone: 0,
    daylight: 0,
    pad2: 0,
  };
}

export const ZERO_EFI_TIME: EfiTime = Object.freeze({
  year: 0, month: 0, day: 0, hour: 0, minute: 0, second: 0, pad1: 0, nanosecond: 0, timeZone: 0, daylight: 0, pad2: 0,
});
