/**
 * EFI_GUID: {UINT32 Data1; UINT16 Data2; UINT16 Data3; UINT8 Data4[8]} stored little-endian
 * for the first three fields ("mixed-endian"), printed as 8-4-4-4-12 hex.
 */
import { GuidError } from "./errors.js";

const HEX = "0123456789abcdef";
const GUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

function hexByte(b: number): string {
  return HEX[(b >> 4) & 0xf]! + HEX[b & 0xf]!;
}

/** Canonical lowercase text of the 16 bytes at `offset`. */
export function guidToString(bytes: Uint8Array, offset = 0): string {
  if (offset < 0 || offset + 16 > bytes.length) throw new GuidError("a GUID needs 16 bytes");
  const b = (i: number): string => hexByte(bytes[offset + i]!);
  return (
    b(3) + b(2) + b(1) + b(0) + "-" + b(5) + b(4) + "-" + b(7) + b(6) + "-" + b(8) + b(9) + "-" +
    b(10) + b(11) + b(12) + b(13) + b(14) + b(15)
  );
}

/** The 16 on-disk bytes of a GUID given as text (any case). */
export function guidToBytes(text: string): Uint8Array {
  if (!GUID_RE.test(text)) throw new GuidError(`not a GUID: ${JSON.stringify(text.slice(0, 60))}`);
  const h = text.replace(/-/g, "");
  const at = (i: number): number => parseInt(h.slice(i * 2, i * 2 + 2), 16);
  const out = new Uint8Array(16);
  // Data1..Data3 are little-endian on disk; Data4 is a byte array.
  out[0] = at(3); out[1] = at(2); out[2] = at(1); out[3] = at(0);
  out[4] = at(5); out[5] = at(4);
  out[6] = at(7); out[7] = at(6);
  for (let i = 8; i < 16; i++) out[i] = at(i);
  return out;
}

export function isGuid(text: string): boolean {
  return GUID_RE.test(text);
}

/** Lowercase canonical form; throws GuidError on anything that is not a GUID. */
export function normalizeGuid(text: string): string {
  if (!GUID_RE.test(text)) throw new GuidError(`not a GUID: ${JSON.stringify(text.slice(0, 60))}`);
  return text.toLowerCase();
}

export function guidEquals(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/** Well-known GUIDs, lowercase. */
export const GUIDS = {
  /** EFI_GLOBAL_VARIABLE: Boot####, BootOrder, BootNext, ConIn, ... */
  globalVariable: "8be4df61-93ca-11d2-aa0d-00e098032b8c",
  /** gEfiSystemNvDataFvGuid: FileSystemGuid of the OVMF varstore firmware volume. */
  systemNvDataFv: "fff12b8d-7696-4c8b-a985-2747075b4f50",
  /** gEfiAuthenticatedVariableGuid: signature of a store with 60-byte headers. */
  authenticatedVariable: "aaf32c78-947b-439a-a180-2e144ec37792",
  /** gEfiVariableGuid: signature of a store with 32-byte (non-authenticated) headers. */
  variable: "ddcf3616-3275-4164-98b6-fe85707ffe7d",
  /** Optional data edk2's BDS puts on the boot options it creates itself (BmBoot.c). */
  autoCreatedBootOption: "8108ac4e-9f11-4d59-850e-e21a522c59b2",
  imageSecurityDatabase: "d719b2cb-3d3a-4596-a3bc-dad00e67656f",
  ftwWorkingBlock: "9e58292b-7c68-497d-a0ce-6500fd9f1b95",
} as const;
