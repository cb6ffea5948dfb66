import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../util/atomic.js";
import { VmhostError } from "../util/errors.js";

/** Hyper-V's organisationally unique identifier for dynamic MAC addresses. */
export const HYPERV_OUI = "00:15:5D";

const PoolFile = z.object({ base: z.number().int().min(0).max(0xffffff), next: z.number().int().min(0) });

/**
 * Dynamic MAC addresses: 00:15:5D plus a per-host 24-bit base and a counter that only grows,
 * persisted, so one host never hands out the same address twice.
 */
export class MacPool {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(readonly file: string) {}

  allocate(): Promise<string> {
    const run = this.chain.then(() => this.allocateNow());
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async allocateNow(): Promise<string> {
    let state: z.infer<typeof PoolFile>;
    try {
      state = PoolFile.parse(JSON.parse(await readFile(this.file, "utf8")));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new VmhostError("mac-pool-damaged", `MAC pool ${this.file} is damaged (${(err as Error).message}); move it aside and vmhost starts a new one`, 500);
      }
      const seed = createHash("sha256").update(randomBytes(16)).digest();
      state = { base: seed.readUIntBE(0, 3) & 0xffff00, next: 0 };
    }
    if (state.next > 0xffffff) throw new VmhostError("mac-pool-exhausted", `MAC pool ${this.file} is exhausted: give the adapter a static MAC address (--mac)`, 500);
    const value = (state.base + state.next) & 0xffffff;
    state.next += 1;
    await mkdir(dirname(this.file), { recursive: true });
    await writeFileAtomic(this.file, JSON.stringify(state) + "\n");
    return formatMac(value);
  }
}

function formatMac(low24: number): string {
  const b = [(low24 >> 16) & 0xff, (low24 >> 8) & 0xff, low24 & 0xff];
  return `${HYPERV_OUI}:${b.map((x) => x.toString(16).padStart(2, "0").toUpperCase()).join(":")}`;
}

/** A MAC address a user gave that no network adapter may have: a user error (400). */
export class MacAddressError extends VmhostError {
  constructor(message: string) {
    super("bad-mac", message, 400);
    this.name = "MacAddressError";
  }
}

/**
 * A user-given MAC address in vmhost's stored form, "00:15:5D:01:02:03": 12 hex digits, with or
 * without ":" or "-" between them (Hyper-V writes 00155D010203 and 00-15-5D-01-02-03).
 * Throws MacAddressError (status 400) for empty text, anything but 12 hex digits, the all-zero
 * address, and group addresses: the I/G bit (the low bit of the first octet, IEEE Std 802-2014
 * clause 8.2) set, which is multicast, and FF:FF:FF:FF:FF:FF, broadcast. A NIC's own address
 * must be an individual one.
 */
export function normalizeMac(text: string): string {
  const hint = "give 12 hex digits such as 00:15:5D:01:02:03, or leave the MAC out for a dynamic one";
  if (text.trim() === "") throw new MacAddressError(`the MAC address is empty: ${hint}`);
  const hex = text.replace(/[:-]/g, "").toUpperCase();
  if (!/^[0-9A-F]{12}$/.test(hex)) throw new MacAddressError(`MAC address ${JSON.stringify(text)} is invalid: ${hint}`);
  const mac = hex.match(/../g)!.join(":");
  if (hex === "000000000000") throw new MacAddressError(`MAC address ${mac} is all zeros, which no network adapter may have: ${hint}`);
  if (hex === "FFFFFFFFFFFF") throw new MacAddressError(`MAC address ${mac} is the broadcast address, which no network adapter may have: ${hint}`);
  if (parseInt(hex.slice(0, 2), 16) & 1) {
    throw new MacAddressError(`MAC address ${mac} is a multicast (group) address: the low bit of its first byte is set; a network adapter needs an individual address (${hint})`);
  }
  return mac;
}
