/**
 * Typed errors of the firmware codecs. Every malformed input surfaces as one of these
 * (never a RangeError or TypeError from a stray read), so callers can report a damaged
 * NVRAM file by name and carry on.
 */

export type VarStoreErrorCode =
  | "TOO_SMALL"
  | "BAD_FV_SIGNATURE"
  | "BAD_FV_GUID"
  | "BAD_FV_HEADER_LENGTH"
  | "BAD_FV_CHECKSUM"
  | "BAD_FV_LENGTH"
  | "BAD_FV_REVISION"
  | "BAD_FV_BLOCKMAP"
  | "BAD_STORE_SIGNATURE"
  | "BAD_STORE_SIZE"
  | "STORE_NOT_FORMATTED"
  | "STORE_NOT_HEALTHY"
  | "BAD_VARIABLE"
  | "BAD_STATE"
  | "BAD_PADDING"
  | "DUPLICATE_VARIABLE"
  | "UNERASED_FREE_SPACE"
  | "BAD_NAME"
  | "BAD_ATTRIBUTES"
  | "STORE_FULL"
  | "FIRMWARE_MISMATCH"
  | "IO";

export type DevicePathErrorCode =
  | "TRUNCATED"
  | "BAD_NODE_LENGTH"
  | "MISSING_END"
  | "TRAILING_BYTES"
  | "EMPTY"
  | "SYNTAX"
  | "UNKNOWN_NODE"
  | "BAD_ARGUMENT"
  | "TOO_LONG";

export type LoadOptionErrorCode = "TRUNCATED" | "UNTERMINATED_DESCRIPTION" | "BAD_FILE_PATH_LENGTH" | "BAD_FILE_PATH";

export type GuidErrorCode = "BAD_GUID";

export type BootErrorCode =
  | "BAD_BOOT_ORDER"
  | "BAD_BOOT_NUMBER"
  | "DUPLICATE_ENTRY"
  | "UNKNOWN_ENTRY"
  | "NO_FREE_NUMBER"
  | "BAD_LAYOUT";

/** Base class: `code` is stable and machine-readable, `message` is for humans. */
export class FirmwareError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FirmwareError";
    this.code = code;
  }
}

/**
 * A variable store that cannot be read or written. `path` is the file (when the store came
 * from one) and `offset` the byte of the image where the damage is (when it is in one place);
 * both are also in the message. `detail` is the message without the file name, so a caller
 * that re-reads the error for another file can rebuild it.
 */
export class VarStoreError extends FirmwareError {
  declare readonly code: VarStoreErrorCode;
  /** The file the store came from, when it came from a file. */
  readonly path: string | undefined;
  /** Byte offset in the image of what is wrong, when it is one place. */
  readonly offset: number | undefined;
  /** The message without the file name. */
  readonly detail: string;
  constructor(code: VarStoreErrorCode, message: string, options?: { cause?: unknown; path?: string; offset?: number }) {
    super(code, options?.path !== undefined ? `${options.path}: ${message}` : message, options);
    this.name = "VarStoreError";
    this.path = options?.path;
    this.offset = options?.offset;
    this.detail = message;
  }
}

export class DevicePathError extends FirmwareError {
  declare readonly code: DevicePathErrorCode;
  constructor(code: DevicePathErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "DevicePathError";
  }
}

export class LoadOptionError extends FirmwareError {
  declare readonly code: LoadOptionErrorCode;
  constructor(code: LoadOptionErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "LoadOptionError";
  }
}

export class GuidError extends FirmwareError {
  declare readonly code: GuidErrorCode;
  constructor(message: string) {
    super("BAD_GUID", message);
    this.name = "GuidError";
  }
}

export class BootError extends FirmwareError {
  declare readonly code: BootErrorCode;
  constructor(code: BootErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = "BootError";
  }
}

/** True for any error raised by this module on purpose. */
export function isFirmwareError(e: unknown): e is FirmwareError {
  return e instanceof FirmwareError;
}
