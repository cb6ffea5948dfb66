import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MacAddressError, MacPool, normalizeMac } from "../../src/model/macpool.js";
import { VmhostError } from "../../src/util/errors.js";

/** The refusal is a user error: a VmhostError with status 400 (the API answers 400, not 500). */
function refused(text: string, why: RegExp): void {
  assert.throws(
    () => normalizeMac(text),
    (e: unknown) => {
      assert.ok(e instanceof MacAddressError && e instanceof VmhostError, `a typed user error, got ${String(e)}`);
      assert.equal(e.status, 400);
      assert.equal(e.code, "bad-mac");
      assert.match(e.message, why);
      return true;
    },
    JSON.stringify(text),
  );
}

test("MAC addresses: the forms Hyper-V writes are taken and stored as 00:15:5D:01:02:03", () => {
  assert.equal(normalizeMac("00:15:5d:01:02:03"), "00:15:5D:01:02:03");
  assert.equal(normalizeMac("00-15-5D-01-02-03"), "00:15:5D:01:02:03");
  assert.equal(normalizeMac("00155D0102FF"), "00:15:5D:01:02:FF");
  assert.equal(normalizeMac("02:00:00:00:00:01"), "02:00:00:00:00:01", "a locally administered individual address is fine");
});

test("MAC addresses: empty, all-zero, broadcast, multicast and malformed ones are refused as user errors", () => {
  refused("", /the MAC address is empty/);
  refused("  ", /the MAC address is empty/);
  refused("00:00:00:00:00:00", /00:00:00:00:00:00 is all zeros/);
  refused("000000000000", /all zeros/);
  refused("FF:FF:FF:FF:FF:FF", /FF:FF:FF:FF:FF:FF is the broadcast address/);
  refused("01:00:5E:00:00:FB", /01:00:5E:00:00:FB is a multicast \(group\) address/); // IPv4 mDNS group
  refused("33:33:00:00:00:01", /multicast/); // IPv6 all-nodes group
  refused("03:15:5D:01:02:03", /multicast/); // I/G bit plus U/L bit
  refused("00:15:5D:01:02", /is invalid: give 12 hex digits/);
  refused("00:15:5D:01:02:0G", /is invalid/);
  for (const text of ["", "00:00:00:00:00:00", "FF:FF:FF:FF:FF:FF"]) {
    assert.throws(() => normalizeMac(text), /leave the MAC out for a dynamic one/, "each refusal says what to do");
  }
});

test("MAC pool: individual 00:15:5D addresses, never twice across restarts; a damaged pool file is named", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmh-macpool-"));
  try {
    const file = join(dir, "mac-pool.json");
    const seq = [await new MacPool(file).allocate(), await new MacPool(file).allocate(), await new MacPool(file).allocate()];
    assert.equal(new Set(seq).size, 3);
    for (const m of seq) assert.equal(normalizeMac(m), m, "every pool address passes the user check");
    await writeFile(file, "{ not json");
    await assert.rejects(new MacPool(file).allocate(), (e: unknown) => {
      assert.ok(e instanceof VmhostError);
      assert.equal(e.code, "mac-pool-damaged");
      assert.ok(e.message.includes(file));
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
