/**
 * Which variable store an OVMF code image works with. OVMF is built for a flash device of
 * 1, 2 or 4 MiB (OvmfPkg/Include/Fdf/OvmfPkgDefines.fdf.inc, FD_SIZE_IN_KB): the device is
 * VARS followed by CODE, and the code image has the address and the size of the variable
 * store compiled in (PcdOvmfFlashNvStorageVariableBase = the device's base). QEMU maps the
 * split images at the top of 4 GiB, CODE last, so the VARS image must be exactly the
 * VARS_SIZE of the code's build:
 *   - too small or too large, it lands at another address; OVMF does not find its flash
 *     there and keeps every variable in RAM (nothing persists);
 *   - right size but another layout, OVMF's flash driver finds a volume whose FvLength is not
 *     the one it was built for and erases it (OvmfPkg/QemuFlashFvbServicesRuntimeDxe/
 *     FwBlockService.c, InitializeVariableFvHeader).
 * Debian 12's /usr/share/OVMF: OVMF_CODE.fd 1966080 B (2 MiB build) with OVMF_VARS.fd
 * 131072 B; OVMF_CODE_4M*.fd 3653632 B (4 MiB build) with OVMF_VARS_4M*.fd 540672 B.
 */
import { stat } from "node:fs/promises";
import { VarStoreError } from "./errors.js";
import { readVarStoreFile } from "./varstorefile.js";
import type { VarStore } from "./varstore.js";

/** One OVMF flash build: sizes in bytes, from OvmfPkgDefines.fdf.inc. */
export interface OvmfFlashBuild {
  /** "1M", "2M" or "4M" (FD_SIZE_IN_KB / 1024). */
  readonly name: string;
  /** The whole flash device (FW_SIZE). */
  readonly deviceSize: number;
  /** The code image (CODE_SIZE): OVMF_CODE*.fd. */
  readonly codeSize: number;
  /** The variable image (VARS_SIZE): OVMF_VARS*.fd, one firmware volume. */
  readonly varsSize: number;
  /** The variable region, store header included, from the image's start (VARS_LIVE_SIZE). */
  readonly variableRegionSize: number;
  /** Flash block size (BLOCK_SIZE); the volume's block map must use it. */
  readonly blockSize: number;
}

export const OVMF_FLASH_BUILDS: readonly OvmfFlashBuild[] = [
  { name: "1M", deviceSize: 0x100000, codeSize: 0xe0000, varsSize: 0x20000, variableRegionSize: 0xe000, blockSize: 0x1000 },
  { name: "2M", deviceSize: 0x200000, codeSize: 0x1e0000, varsSize: 0x20000, variableRegionSize: 0xe000, blockSize: 0x1000 },
  { name: "4M", deviceSize: 0x400000, codeSize: 0x37c000, varsSize: 0x84000, variableRegionSize: 0x40000, blockSize: 0x1000 },
];

/** The build a code image of `codeSize` bytes belongs to, or undefined for an unknown size. */
export function ovmfBuildForCode(codeSize: number): OvmfFlashBuild | undefined {
  return OVMF_FLASH_BUILDS.find((b) => b.codeSize === codeSize);
}

/** The builds whose variable image has `varsSize` bytes (1M and 2M share one layout). */
export function ovmfBuildsForVars(varsSize: number): OvmfFlashBuild[] {
  return OVMF_FLASH_BUILDS.filter((b) => b.varsSize === varsSize);
}

export interface FirmwareFiles {
  /** The VARS file, for the message. */
  readonly vars?: string;
  /** The CODE file, for the message. */
  readonly code?: string;
}

function describe(size: number, what: "code" | "vars"): string {
  const builds = what === "code" ? [ovmfBuildForCode(size)].filter((b) => b !== undefined) : ovmfBuildsForVars(size);
  if (builds.length === 0) return `${size} bytes, no OVMF build's size`;
  return `${size} bytes, the ${builds.map((b) => b.name).join("/")} build's`;
}

/**
 * Checks that `store` is laid out for the OVMF build of a `codeSize`-byte code image: image
 * size, volume length, block size and variable region all as that build expects. Returns the
 * build. Throws VarStoreError FIRMWARE_MISMATCH naming both files (when given) and both sizes
 * otherwise, also for a code size of no known build (then nothing says where OVMF looks).
 */
export function checkVarStoreForFirmware(store: VarStore, codeSize: number, files: FirmwareFiles = {}): OvmfFlashBuild {
  const varsName = files.vars ?? store.path ?? "the variable store";
  const codeName = files.code ?? "the firmware code";
  const L = store.layout;
  const fail = (why: string): never => {
    throw new VarStoreError(
      "FIRMWARE_MISMATCH",
      `${varsName} (${describe(L.fileSize, "vars")}) does not fit ${codeName} (${describe(codeSize, "code")}): ${why}. ` +
        `Use a variable store made from the same build's OVMF_VARS template`,
    );
  };
  const build = ovmfBuildForCode(codeSize);
  if (build === undefined) {
    return fail(`a ${codeSize}-byte code image is none of the OVMF builds vmhost knows (${OVMF_FLASH_BUILDS.map((b) => `${b.name}: ${b.codeSize}`).join(", ")}), so where it looks for its variables is unknown`);
  }
  if (L.fileSize !== build.varsSize) {
    return fail(`the ${build.name} build needs a ${build.varsSize}-byte store; QEMU would map this one where OVMF does not look, and OVMF would keep all variables in RAM, so nothing would persist`);
  }
  const blocksOk = L.blockMap.length > 0 && L.blockMap.every((b) => b.length === build.blockSize);
  if (L.fvLength !== build.varsSize || !blocksOk) {
    return fail(`its firmware volume (length ${L.fvLength}, blocks of ${L.blockMap.map((b) => b.length).join("/")} bytes) is not the ${build.name} build's (${build.varsSize}, ${build.blockSize}); OVMF would erase it`);
  }
  if (L.storeOffset + L.storeSize !== build.variableRegionSize) {
    return fail(`its variable region ends at ${L.storeOffset + L.storeSize}, the ${build.name} build's at ${build.variableRegionSize}; the build's fault-tolerant-write area would overlap or leave a gap`);
  }
  return build;
}

/**
 * checkVarStoreForFirmware on files: reads and parses `varsPath` (VarStoreError on damage),
 * takes the size of `codePath`. Throws VarStoreError IO when either cannot be read.
 */
export async function checkVarStoreFileForFirmware(varsPath: string, codePath: string): Promise<OvmfFlashBuild> {
  const store = await readVarStoreFile(varsPath);
  let codeSize: number;
  try {
    codeSize = (await stat(codePath)).size;
  } catch (e) {
    throw new VarStoreError("IO", `cannot read the firmware code ${codePath}: ${(e as Error).message}`, { cause: e, path: codePath });
  }
  return checkVarStoreForFirmware(store, codeSize, { vars: varsPath, code: codePath });
}
