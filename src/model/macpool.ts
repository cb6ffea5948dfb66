import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../util/atomic.js";

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
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw new Error(`MAC pool ${this.file} is damaged: ${(err as Error).message}`);
      const seed = createHash("sha256").update(randomBytes(16)).digest();
      state = { base: seed.readUIntBE(0, 3) & 0xffff00, next: 0 };
    }
    if (state.next > 0xffffff) throw new Error(`MAC pool ${this.file} is exhausted`);
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

export function normalizeMac(text: string): string {
  const hex = text.replace(/[:-]/g, "").toUpperCase();
  if (!/^[0-9A-F]{12}$/.test(hex)) throw new Error(`MAC address ${JSON.stringify(text)} is invalid: give 12 hex digits`);
  if (parseInt(hex.slice(0, 2), 16) & 1) throw new Error(`MAC address ${text} is a multicast address`);
  return hex.match(/../g)!.join(":");
}
