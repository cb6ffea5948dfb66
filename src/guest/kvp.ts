import { z } from "zod";
import type { AgentCaller } from "./agent.js";
import { readGuestFile, writeGuestFile } from "./files.js";

/**
 * Key-Value Pair Exchange in hv_kvp_daemon's own files, so software in a guest that reads or
 * writes Hyper-V KVP pools works unchanged:
 *   /var/lib/hyperv/.kvp_pool_N, a sequence of `struct kvp_record { char key[512]; char value[2048]; }`
 * (linux/hyperv.h: HV_KVP_EXCHANGE_MAX_KEY_SIZE, HV_KVP_EXCHANGE_MAX_VALUE_SIZE), each a
 * NUL-terminated UTF-8 string padded with NULs. The daemon compares and copies them with
 * strcpy/memcmp, so a key holds at most 511 bytes and a value 2047 (the NUL must fit).
 */

export const KVP_KEY_SIZE = 512;
export const KVP_VALUE_SIZE = 2048;
export const KVP_RECORD_SIZE = KVP_KEY_SIZE + KVP_VALUE_SIZE;
export const KVP_DIR = "/var/lib/hyperv";

/** Pools as the Linux daemon numbers them (KVP_POOL_EXTERNAL = 0, KVP_POOL_GUEST = 1, AUTO = 2, ...). */
export const KVP_POOLS = { external: 0, guest: 1 } as const;
export type KvpFilePool = keyof typeof KVP_POOLS;
export type KvpPoolName = KvpFilePool | "intrinsic";

export function poolPath(pool: KvpFilePool): string {
  return `${KVP_DIR}/.kvp_pool_${KVP_POOLS[pool]}`;
}

/** Most records vmhost reads from one pool file (10 MiB); a larger file is refused, not parsed. */
export const KVP_MAX_RECORDS = 4096;

export class KvpError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KvpError";
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
/** A UTF-16 surrogate without its partner: such a string has no UTF-8 form. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function checkText(what: "key" | "value", s: string, maxBytes: number): Buffer {
  if (typeof s !== "string") throw new KvpError(`the ${what} must be text`);
  if (LONE_SURROGATE.test(s)) throw new KvpError(`the ${what} is not valid Unicode (it has an unpaired surrogate), so it has no UTF-8 form`);
  if (s.includes("\0")) throw new KvpError(`the ${what} contains a NUL character, which ends a string in the pool file`);
  const b = Buffer.from(s, "utf8");
  if (b.length > maxBytes) throw new KvpError(`the ${what} is ${b.length} bytes in UTF-8; Hyper-V KVP allows at most ${maxBytes} (${maxBytes + 1} with its terminating NUL)`);
  return b;
}

/** Validates a key: non-empty UTF-8 of at most 511 bytes without NUL. */
export function checkKey(key: string): Buffer {
  const b = checkText("key", key, KVP_KEY_SIZE - 1);
  if (b.length === 0) throw new KvpError("the key is empty");
  return b;
}

export function checkValue(value: string): Buffer {
  return checkText("value", value, KVP_VALUE_SIZE - 1);
}

export interface KvpItem {
  key: string;
  value: string;
}

export function encodeRecord(key: string, value: string): Buffer {
  const rec = Buffer.alloc(KVP_RECORD_SIZE); // zero-filled: the NUL terminators and padding
  checkKey(key).copy(rec, 0);
  checkValue(value).copy(rec, KVP_KEY_SIZE);
  return rec;
}

export function encodePool(items: readonly KvpItem[]): Buffer {
  const seen = new Set<string>();
  for (const i of items) {
    if (seen.has(i.key)) throw new KvpError(`key "${i.key}" appears twice`);
    seen.add(i.key);
  }
  return Buffer.concat(items.map((i) => encodeRecord(i.key, i.value)));
}

export interface DecodedPool {
  items: KvpItem[];
  /** Records skipped: no NUL in the field, not UTF-8, empty key, or a repeated key. */
  invalid: number;
  /** Bytes after the last whole record (the daemon ignores them too). */
  trailingBytes: number;
}

function field(buf: Buffer): string | undefined {
  const end = buf.indexOf(0);
  if (end < 0) return undefined; // the daemon's strcpy would run off the end
  try {
    return utf8.decode(buf.subarray(0, end));
  } catch {
    return undefined;
  }
}

/** Parses a pool file as the guest left it; untrusted, so anything malformed is counted and skipped. */
export function decodePool(buf: Buffer): DecodedPool {
  const n = Math.floor(buf.length / KVP_RECORD_SIZE);
  if (n > KVP_MAX_RECORDS) throw new KvpError(`the pool holds ${n} records; vmhost reads at most ${KVP_MAX_RECORDS}`);
  const items: KvpItem[] = [];
  const seen = new Set<string>();
  let invalid = 0;
  for (let i = 0; i < n; i++) {
    const rec = buf.subarray(i * KVP_RECORD_SIZE, (i + 1) * KVP_RECORD_SIZE);
    const key = field(rec.subarray(0, KVP_KEY_SIZE));
    const value = field(rec.subarray(KVP_KEY_SIZE));
    if (!key || value === undefined || seen.has(key)) {
      invalid++;
      continue;
    }
    seen.add(key);
    items.push({ key, value });
  }
  return { items, invalid, trailingBytes: buf.length - n * KVP_RECORD_SIZE };
}

// ---- pools in the guest --------------------------------------------------------------

export async function readPool(agent: AgentCaller, pool: KvpFilePool): Promise<DecodedPool & { exists: boolean }> {
  const data = await readGuestFile(agent, poolPath(pool), KVP_MAX_RECORDS * KVP_RECORD_SIZE + KVP_RECORD_SIZE - 1);
  return { ...decodePool(data ?? Buffer.alloc(0)), exists: data !== undefined };
}

/** Replace a pool's content with exactly these items, in this order (one write of whole records). */
export async function writePool(agent: AgentCaller, pool: KvpFilePool, items: readonly KvpItem[]): Promise<void> {
  await writeGuestFile(agent, poolPath(pool), encodePool(items));
}

/** What differs between two views of a pool, for the event journal. */
export function diffItems(before: readonly KvpItem[], after: readonly KvpItem[]): { added: string[]; changed: string[]; removed: string[] } {
  const b = new Map(before.map((i) => [i.key, i.value]));
  const a = new Map(after.map((i) => [i.key, i.value]));
  return {
    added: [...a.keys()].filter((k) => !b.has(k)),
    changed: [...a.keys()].filter((k) => b.has(k) && b.get(k) !== a.get(k)),
    removed: [...b.keys()].filter((k) => !a.has(k)),
  };
}

export function sameItems(a: readonly KvpItem[], b: readonly KvpItem[]): boolean {
  return a.length === b.length && a.every((x, i) => x.key === b[i]!.key && x.value === b[i]!.value);
}

// ---- intrinsic items (Hyper-V's KVP_POOL_AUTO) --------------------------------------------

const Str = z.string().max(4096);
export const OsInfo = z
  .object({
    "kernel-release": Str.optional(),
    "kernel-version": Str.optional(),
    machine: Str.optional(),
    id: Str.optional(),
    name: Str.optional(),
    "pretty-name": Str.optional(),
    version: Str.optional(),
    "version-id": Str.optional(),
  })
  .passthrough();
export const HostName = z.object({ "host-name": Str }).passthrough();
export const NetworkInterfaces = z
  .array(
    z
      .object({
        name: Str,
        "hardware-address": Str.optional(),
        "ip-addresses": z
          .array(z.object({ "ip-address-type": z.enum(["ipv4", "ipv6"]), "ip-address": z.string().max(64), prefix: z.number().int().min(0).max(128) }).passthrough())
          .max(1024)
          .optional(),
      })
      .passthrough(),
  )
  .max(1024);
export const GuestInfo = z
  .object({
    version: Str,
    supported_commands: z.array(z.object({ name: z.string().max(128), enabled: z.boolean() }).passthrough()).max(1024),
  })
  .passthrough();

export type OsInfo = z.infer<typeof OsInfo>;
export type NetworkInterfaces = z.infer<typeof NetworkInterfaces>;

/** Hyper-V's intrinsic item names, in the daemon's enumeration order. */
export const INTRINSIC_KEYS = [
  "FullyQualifiedDomainName",
  "IntegrationServicesVersion",
  "NetworkAddressIPv4",
  "NetworkAddressIPv6",
  "OSBuildNumber",
  "OSName",
  "OSMajorVersion",
  "OSMinorVersion",
  "OSVersion",
  "ProcessorArchitecture",
] as const;
export type IntrinsicKey = (typeof INTRINSIC_KEYS)[number];

/** Cut a guest-supplied value to what a KVP value can hold (2047 UTF-8 bytes, no NUL, no broken character). */
export function fitValue(s: string): string {
  const b = Buffer.from(s.replace(/\0/g, ""), "utf8"); // lone surrogates become U+FFFD here
  const max = KVP_VALUE_SIZE - 1;
  if (b.length <= max) return b.toString("utf8");
  let end = max;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--; // never split a character
  return b.subarray(0, end).toString("utf8");
}

function isLoopback(ifName: string, addr: string): boolean {
  return ifName === "lo" || addr.startsWith("127.") || addr === "::1";
}

/**
 * The intrinsic items, worked out as hv_kvp_daemon does (kvp_get_os_info and friends), from
 * what qemu-ga reports: OSName is os-release NAME (else "Linux"), OSMajorVersion its
 * VERSION_ID, OSVersion the kernel release up to its first "-", OSBuildNumber the whole
 * release, addresses of non-loopback interfaces joined with ";".
 */
export function intrinsicItems(p: { os?: OsInfo; hostName?: string; interfaces?: NetworkInterfaces; agentVersion?: string }): Record<IntrinsicKey, string> {
  const release = p.os?.["kernel-release"] ?? "";
  const addrs = (type: "ipv4" | "ipv6") =>
    (p.interfaces ?? [])
      .flatMap((i) => (i["ip-addresses"] ?? []).filter((a) => a["ip-address-type"] === type && !isLoopback(i.name, a["ip-address"])).map((a) => a["ip-address"]))
      .join(";");
  const items: Record<IntrinsicKey, string> = {
    FullyQualifiedDomainName: p.hostName ?? "",
    IntegrationServicesVersion: p.agentVersion ?? "",
    NetworkAddressIPv4: addrs("ipv4"),
    NetworkAddressIPv6: addrs("ipv6"),
    OSBuildNumber: release,
    OSName: p.os?.name || (p.os ? "Linux" : ""),
    OSMajorVersion: p.os?.["version-id"] ?? "",
    OSMinorVersion: "",
    OSVersion: release.split("-")[0] ?? "",
    ProcessorArchitecture: p.os?.machine ?? "",
  };
  for (const k of INTRINSIC_KEYS) items[k] = fitValue(items[k]);
  return items;
}
