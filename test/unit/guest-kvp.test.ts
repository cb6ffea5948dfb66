import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import fc from "fast-check";
import {
  KVP_RECORD_SIZE,
  KvpError,
  checkKey,
  checkValue,
  decodePool,
  diffItems,
  encodePool,
  encodeRecord,
  fitValue,
  intrinsicItems,
  INTRINSIC_KEYS,
} from "../../src/guest/kvp.js";

const run = promisify(execFile);

test("a record is hv_kvp_daemon's struct kvp_record: 512-byte key, 2048-byte value, NUL padded", () => {
  const r = encodeRecord("Color", "blue");
  assert.equal(r.length, 2560);
  assert.equal(r.subarray(0, 5).toString(), "Color");
  assert.ok(r.subarray(5, 512).every((b) => b === 0));
  assert.equal(r.subarray(512, 516).toString(), "blue");
  assert.ok(r.subarray(516).every((b) => b === 0));
});

test("limits are bytes of UTF-8 with room for the NUL; bad encodings are refused", () => {
  assert.doesNotThrow(() => checkKey("k".repeat(511)));
  assert.throws(() => checkKey("k".repeat(512)), KvpError);
  assert.throws(() => checkKey("é".repeat(256)), /512 bytes/); // 256 chars, 512 bytes
  assert.doesNotThrow(() => checkValue("v".repeat(2047)));
  assert.throws(() => checkValue("v".repeat(2048)), KvpError);
  assert.throws(() => checkKey(""), /empty/);
  assert.throws(() => checkKey("a\0b"), /NUL/);
  assert.throws(() => checkValue("x\uD800y"), /surrogate/);
  assert.throws(() => checkKey("\uDC00"), /surrogate/);
  assert.doesNotThrow(() => checkValue("emoji \u{1F600} ok"));
  assert.throws(() => encodePool([{ key: "a", value: "1" }, { key: "a", value: "2" }]), /twice/);
});

test("decoding untrusted pools skips malformed records and keeps the first of repeated keys", () => {
  const good = encodeRecord("A", "1");
  const noNul = Buffer.alloc(KVP_RECORD_SIZE, 0x41);
  const badUtf8 = Buffer.alloc(KVP_RECORD_SIZE);
  badUtf8.set([0xc3, 0x28], 0);
  const emptyKey = Buffer.alloc(KVP_RECORD_SIZE);
  const dup = encodeRecord("A", "2");
  // hv_kvp_daemon memcpy's only the new value's bytes: an old longer value may linger after the NUL.
  const stale = encodeRecord("B", "new");
  stale.write("\0old-longer-value", 512 + 3);
  const d = decodePool(Buffer.concat([good, noNul, badUtf8, emptyKey, dup, stale, Buffer.from("partial")]));
  assert.deepEqual(d.items, [
    { key: "A", value: "1" },
    { key: "B", value: "new" },
  ]);
  assert.equal(d.invalid, 4);
  assert.equal(d.trailingBytes, 7);
  assert.throws(() => decodePool(Buffer.alloc(KVP_RECORD_SIZE * 4097)), /at most/);
});

test("encode/decode round-trips any valid items", () => {
  const text = (max: number) =>
    fc.string({ unit: "grapheme", maxLength: 40 }).filter((s) => !s.includes("\0") && Buffer.byteLength(s) <= max);
  fc.assert(
    fc.property(fc.uniqueArray(fc.record({ key: text(511).filter((s) => s.length > 0), value: text(2047) }), { selector: (i) => i.key, maxLength: 8 }), (raw) => {
      const items = raw.map((i) => ({ key: i.key, value: i.value }));
      assert.deepEqual(decodePool(encodePool(items)).items, items);
    }),
  );
});

test("fitValue cuts guest text to 2047 bytes without splitting a character", () => {
  const v = fitValue("\u{1F600}".repeat(600)); // 2400 bytes
  assert.ok(Buffer.byteLength(v) <= 2047);
  assert.equal(v, "\u{1F600}".repeat(511));
  assert.equal(fitValue("a\0b"), "ab");
});

test("intrinsic items follow hv_kvp_daemon's rules", () => {
  const items = intrinsicItems({
    os: { name: "Debian GNU/Linux", "version-id": "12", "kernel-release": "6.1.0-26-amd64", machine: "x86_64" },
    hostName: "appliance",
    agentVersion: "7.2.22",
    interfaces: [
      { name: "lo", "ip-addresses": [{ "ip-address-type": "ipv4", "ip-address": "127.0.0.1", prefix: 8 }] },
      {
        name: "eth0",
        "ip-addresses": [
          { "ip-address-type": "ipv4", "ip-address": "10.0.2.15", prefix: 24 },
          { "ip-address-type": "ipv6", "ip-address": "fec0::1", prefix: 64 },
        ],
      },
      { name: "eth1", "ip-addresses": [{ "ip-address-type": "ipv4", "ip-address": "192.168.1.5", prefix: 24 }] },
    ],
  });
  assert.deepEqual(Object.keys(items).sort(), [...INTRINSIC_KEYS].sort());
  assert.equal(items.OSName, "Debian GNU/Linux");
  assert.equal(items.OSMajorVersion, "12");
  assert.equal(items.OSMinorVersion, "");
  assert.equal(items.OSVersion, "6.1.0");
  assert.equal(items.OSBuildNumber, "6.1.0-26-amd64");
  assert.equal(items.ProcessorArchitecture, "x86_64");
  assert.equal(items.NetworkAddressIPv4, "10.0.2.15;192.168.1.5");
  assert.equal(items.NetworkAddressIPv6, "fec0::1");
  assert.equal(items.FullyQualifiedDomainName, "appliance");
  assert.equal(items.IntegrationServicesVersion, "7.2.22");
  assert.equal(intrinsicItems({ os: { "kernel-release": "5.10.0" } }).OSName, "Linux", "no os-release NAME: uname's sysname");
});

test("diffItems names what was added, changed and removed", () => {
  assert.deepEqual(
    diffItems(
      [
        { key: "a", value: "1" },
        { key: "b", value: "2" },
      ],
      [
        { key: "b", value: "3" },
        { key: "c", value: "4" },
      ],
    ),
    { added: ["c"], changed: ["b"], removed: ["a"] },
  );
});

/**
 * The layout against the real thing: a C program built with linux/hyperv.h's sizes reads our
 * pool the way hv_kvp_daemon does (fread of whole records) and writes one the way it does
 * (memcpy of key_size/value_size bytes including the NUL) for us to read.
 */
test("byte-compatible with hv_kvp_daemon's records (compiled against linux/hyperv.h)", async (t) => {
  try {
    await run("cc", ["--version"]);
    await readFile("/usr/include/linux/hyperv.h");
  } catch {
    t.skip("no C compiler or linux/hyperv.h on this host");
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), "kvp-c-"));
  try {
    const src = `
#include <stdio.h>
#include <string.h>
#include <linux/hyperv.h>
struct kvp_record { char key[HV_KVP_EXCHANGE_MAX_KEY_SIZE]; char value[HV_KVP_EXCHANGE_MAX_VALUE_SIZE]; };
int main(int argc, char **argv) {
  struct kvp_record r;
  if (argv[1][0] == 'r') {
    FILE *f = fopen(argv[2], "r");
    printf("size=%zu\\n", sizeof(struct kvp_record));
    while (fread(&r, sizeof r, 1, f) == 1) printf("%s=%s\\n", r.key, r.value);
    fclose(f);
  } else {
    FILE *f = fopen(argv[2], "w");
    const char *k[] = {"GuestKey", "Ünïcode"}, *v[] = {"from the guest", "wert"};
    for (int i = 0; i < 2; i++) {
      memset(&r, 0, sizeof r);
      memcpy(r.key, k[i], strlen(k[i]) + 1);
      memcpy(r.value, v[i], strlen(v[i]) + 1);
      fwrite(&r, sizeof r, 1, f);
    }
    fclose(f);
  }
  return 0;
}`;
    await writeFile(join(dir, "kvp.c"), src);
    await run("cc", ["-o", join(dir, "kvp"), join(dir, "kvp.c")]);
    const pool = join(dir, ".kvp_pool_0");
    await writeFile(pool, encodePool([{ key: "Color", value: "blue" }, { key: "Größe", value: "ß".repeat(1000) }]));
    const { stdout } = await run(join(dir, "kvp"), ["r", pool]);
    assert.equal(stdout, `size=2560\nColor=blue\nGröße=${"ß".repeat(1000)}\n`);
    const guest = join(dir, ".kvp_pool_1");
    await run(join(dir, "kvp"), ["w", guest]);
    assert.deepEqual(decodePool(await readFile(guest)).items, [
      { key: "GuestKey", value: "from the guest" },
      { key: "Ünïcode", value: "wert" },
    ]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
