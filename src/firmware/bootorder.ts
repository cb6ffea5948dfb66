/**
 * BootOrder / BootNext / Boot#### variables (EFI_GLOBAL_VARIABLE GUID, NV|BS|RT).
 */
import { BootError } from "./errors.js";
import { GUIDS } from "./guid.js";
import { decodeLoadOption, encodeLoadOption, type LoadOption } from "./loadoption.js";
import { ATTRS_NV_BS_RT } from "./variable.js";
import type { VarStore } from "./varstore.js";

const BOOT_NAME = /^Boot([0-9A-F]{4})$/;

/** "Boot000A": four uppercase hex digits, as the spec and edk2 require. */
export function bootOptionName(id: number): string {
  checkId(id);
  return "Boot" + id.toString(16).toUpperCase().padStart(4, "0");
}

/** The number of a Boot#### name, or null for any other name (lowercase hex included). */
export function parseBootOptionName(name: string): number | null {
  const m = BOOT_NAME.exec(name);
  return m === null ? null : parseInt(m[1]!, 16);
}

function checkId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > 0xffff) throw new BootError("BAD_BOOT_NUMBER", `boot option number ${id} is not 0..0xFFFF`);
}

export function decodeBootOrder(data: Uint8Array): number[] {
  if (data.length % 2 !== 0) throw new BootError("BAD_BOOT_ORDER", `BootOrder has an odd length (${data.length})`);
  const out: number[] = [];
  for (let i = 0; i < data.length; i += 2) out.push(data[i]! | (data[i + 1]! << 8));
  return out;
}

export function encodeBootOrder(ids: readonly number[]): Uint8Array {
  const out = new Uint8Array(ids.length * 2);
  ids.forEach((id, i) => {
    checkId(id);
    out[i * 2] = id & 0xff;
    out[i * 2 + 1] = id >> 8;
  });
  return out;
}

export function readBootOrder(store: VarStore): number[] | null {
  const v = store.get("BootOrder", GUIDS.globalVariable);
  return v === undefined ? null : decodeBootOrder(v.data);
}

export function writeBootOrder(store: VarStore, ids: readonly number[]): void {
  store.set("BootOrder", GUIDS.globalVariable, ATTRS_NV_BS_RT, encodeBootOrder(ids));
}

export function readBootNext(store: VarStore): number | null {
  const v = store.get("BootNext", GUIDS.globalVariable);
  if (v === undefined) return null;
  if (v.data.length !== 2) throw new BootError("BAD_BOOT_ORDER", `BootNext has ${v.data.length} bytes, not 2`);
  return v.data[0]! | (v.data[1]! << 8);
}

/** Sets BootNext, or deletes it when `id` is null. */
export function writeBootNext(store: VarStore, id: number | null): void {
  if (id === null) store.delete("BootNext", GUIDS.globalVariable);
  else store.set("BootNext", GUIDS.globalVariable, ATTRS_NV_BS_RT, encodeBootOrder([id]));
}

/** Numbers of all live Boot#### variables, ascending. */
export function listBootOptionIds(store: VarStore): number[] {
  const ids: number[] = [];
  for (const v of store.list()) {
    if (v.guid !== GUIDS.globalVariable) continue;
    const id = parseBootOptionName(v.name);
    if (id !== null) ids.push(id);
  }
  return ids.sort((a, b) => a - b);
}

/** Raw bytes of Boot####, or undefined. */
export function readBootOptionBytes(store: VarStore, id: number): Uint8Array | undefined {
  return store.get(bootOptionName(id), GUIDS.globalVariable)?.data;
}

/** Decoded Boot####; throws LoadOptionError when malformed, undefined when absent. */
export function readBootOption(store: VarStore, id: number): LoadOption | undefined {
  const b = readBootOptionBytes(store, id);
  return b === undefined ? undefined : decodeLoadOption(b);
}

export function writeBootOption(store: VarStore, id: number, option: LoadOption): void {
  store.set(bootOptionName(id), GUIDS.globalVariable, ATTRS_NV_BS_RT, encodeLoadOption(option));
}

export function deleteBootOption(store: VarStore, id: number): boolean {
  return store.delete(bootOptionName(id), GUIDS.globalVariable);
}
