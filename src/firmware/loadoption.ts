/**
 * EFI_LOAD_OPTION (UefiSpec.h), the body of Boot####, Driver####, SysPrep####:
 *   UINT32 Attributes; UINT16 FilePathListLength; CHAR16 Description[] (NUL-terminated);
 *   EFI_DEVICE_PATH FilePathList[] (FilePathListLength bytes, one or more packed paths);
 *   UINT8 OptionalData[] (the rest).
 * The file path list and optional data are kept as bytes, so encode(decode(x)) == x.
 */
import { DevicePathError, LoadOptionError } from "./errors.js";
import { encodeDevicePathList, parseDevicePathList, type DevicePath } from "./devicepath/binary.js";
import { devicePathFromText } from "./devicepath/text.js";
import { GUIDS, guidToBytes } from "./guid.js";
import { decodeUcs2, encodeUcs2, findUcs2Terminator } from "./ucs2.js";

export const LOAD_OPTION = {
  ACTIVE: 0x1,
  FORCE_RECONNECT: 0x2,
  HIDDEN: 0x8,
  CATEGORY_MASK: 0x1f00,
  CATEGORY_BOOT: 0x0,
  CATEGORY_APP: 0x100,
} as const;

export interface LoadOption {
  readonly attributes: number;
  readonly description: string;
  /** FilePathList exactly as stored. */
  readonly filePathList: Uint8Array;
  readonly optionalData: Uint8Array;
}

export function decodeLoadOption(bytes: Uint8Array): LoadOption {
  if (bytes.length < 8) throw new LoadOptionError("TRUNCATED", `load option of ${bytes.length} bytes is shorter than its fixed part`);
  const attributes = (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
  const fplLength = bytes[4]! | (bytes[5]! << 8);
  const descEnd = findUcs2Terminator(bytes, 6);
  if (descEnd < 0) throw new LoadOptionError("UNTERMINATED_DESCRIPTION", "load option description has no NUL terminator");
  if (descEnd + fplLength > bytes.length) {
    throw new LoadOptionError(
      "BAD_FILE_PATH_LENGTH",
      `FilePathListLength ${fplLength} runs ${descEnd + fplLength - bytes.length} bytes past the option`,
    );
  }
  return {
    attributes,
    description: decodeUcs2(bytes, 6, descEnd - 2),
    filePathList: bytes.slice(descEnd, descEnd + fplLength),
    optionalData: bytes.slice(descEnd + fplLength),
  };
}

export function encodeLoadOption(option: LoadOption): Uint8Array {
  if (option.filePathList.length > 0xffff) {
    throw new LoadOptionError("BAD_FILE_PATH_LENGTH", `file path list of ${option.filePathList.length} bytes exceeds 65535`);
  }
  const desc = encodeUcs2(option.description, true);
  const out = new Uint8Array(6 + desc.length + option.filePathList.length + option.optionalData.length);
  const a = option.attributes >>> 0;
  out[0] = a & 0xff;
  out[1] = (a >>> 8) & 0xff;
  out[2] = (a >>> 16) & 0xff;
  out[3] = (a >>> 24) & 0xff;
  out[4] = option.filePathList.length & 0xff;
  out[5] = option.filePathList.length >> 8;
  out.set(desc, 6);
  out.set(option.filePathList, 6 + desc.length);
  out.set(option.optionalData, 6 + desc.length + option.filePathList.length);
  return out;
}

/** The device paths of the option; throws LoadOptionError BAD_FILE_PATH when malformed. */
export function loadOptionPaths(option: LoadOption): DevicePath[] {
  try {
    return parseDevicePathList(option.filePathList);
  } catch (e) {
    if (e instanceof DevicePathError) throw new LoadOptionError("BAD_FILE_PATH", e.message, { cause: e });
    throw e;
  }
}

/** The auto-created marker edk2's BDS stores as optional data (16 bytes). */
export function autoCreatedMarker(): Uint8Array {
  return guidToBytes(GUIDS.autoCreatedBootOption);
}

/** True when optional data is exactly the auto-created GUID (BmIsAutoCreateBootOption). */
export function isAutoCreated(option: LoadOption): boolean {
  const m = autoCreatedMarker();
  const d = option.optionalData;
  return d.length === 16 && d.every((b, i) => b === m[i]);
}

export interface NewLoadOption {
  description: string;
  /** Device path text (edk2 forms) or binary paths; several paths are packed in order. */
  path: string | DevicePath | readonly DevicePath[];
  /** Default: ACTIVE, boot category. */
  attributes?: number;
  optionalData?: Uint8Array;
}

export function makeLoadOption(o: NewLoadOption): LoadOption {
  const paths: readonly DevicePath[] =
    typeof o.path === "string" ? [devicePathFromText(o.path)] : isPathList(o.path) ? o.path : [o.path as DevicePath];
  if (o.description.includes("\0")) throw new LoadOptionError("UNTERMINATED_DESCRIPTION", "description contains NUL");
  return {
    attributes: o.attributes ?? LOAD_OPTION.ACTIVE,
    description: o.description,
    filePathList: encodeDevicePathList(paths),
    optionalData: o.optionalData ?? new Uint8Array(0),
  };
}

function isPathList(p: DevicePath | readonly DevicePath[]): p is readonly DevicePath[] {
  return p.length > 0 && Array.isArray(p[0]);
}
