/**
 * The OVMF variable store codec on real stores written by OVMF and on Debian's templates:
 * byte-exact round trip, layout, live-copy rules, flash-style writes, compaction, validation
 * and the file helpers.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, stat, writeFile, chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  decodeBootOrder, GUIDS, parseVarStore, readVarStoreFile, VAR_STATE, VarStore, VarStoreError, VARIABLE_ATTRIBUTE as VA,
  writeVarStoreFileAtomic, ATTRS_NV_BS_RT, efiTimeFromDate, checkVarStoreForFirmware, checkVarStoreFileForFirmware, OVMF_FLASH_BUILDS,
} from "../../src/firmware/index.js";
import { BOOTED_STORES, buildVarStoreImage, fixture, PRISTINE_FIXTURES, SYSTEM_TEMPLATES } from "../fixtures/firmware/helpers.js";

const G = GUIDS.globalVariable;
const TEST_GUID = "12345678-9abc-def0-1234-56789abcdef0";
const bytes = (...v: number[]): Uint8Array => Uint8Array.from(v);

function diffOffsets(a: Uint8Array, b: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

function isVarStoreError(code: string) {
  return (e: unknown): boolean => e instanceof VarStoreError && e.code === code;
}

test("every fixture and template parses and serializes to the same bytes", () => {
  const all: [string, Uint8Array][] = [
    ...[...BOOTED_STORES, ...PRISTINE_FIXTURES].map((n): [string, Uint8Array] => [n, fixture(n)]),
    ...SYSTEM_TEMPLATES.map((p): [string, Uint8Array] => [p, new Uint8Array(readFileSync(p))]),
  ];
  assert.ok(all.length >= 6);
  for (const [name, buf] of all) {
    const s = parseVarStore(buf);
    assert.deepEqual(s.toBuffer(), buf, name);
    assert.equal(s.layout.authenticated, true, name);
    assert.equal(s.layout.recordHeaderSize, 60);
  }
});


test("layouts: 4 MiB and 2 MiB builds", () => {
  const l4 = parseVarStore(fixture("ovmf4m.fd")).layout;
  assert.deepEqual(
    { fvLength: l4.fvLength, hdr: l4.fvHeaderLength, store: l4.storeOffset, size: l4.storeSize, start: l4.variablesStart, end: l4.variablesEnd },
    { fvLength: 0x84000, hdr: 0x48, store: 0x48, size: 0x3ffb8, start: 0x64, end: 0x40000 },
  );
  assert.deepEqual(l4.blockMap, [{ numBlocks: 0x84, length: 0x1000 }]);
  const l2 = parseVarStore(fixture("ovmf2m.fd")).layout;
  assert.deepEqual(
    { fvLength: l2.fvLength, size: l2.storeSize, end: l2.variablesEnd },
    { fvLength: 0x20000, size: 0xdfb8, end: 0xe000 },
  );
});

test("only live copies count; OVMF leaves deleted ones behind", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  const bootOrders = s.records().filter((r) => r.name === "BootOrder" && r.guid === G);
  assert.ok(bootOrders.length > 3, "OVMF rewrote BootOrder several times");
  assert.equal(bootOrders.filter((r) => r.state === VAR_STATE.ADDED).length, 1);
  assert.ok(bootOrders.slice(0, -1).every((r) => r.state === 0x3c));
  assert.deepEqual(decodeBootOrder(s.get("BootOrder", G)!.data), [0, 1, 2, 3, 4, 5, 6]);
  assert.equal(s.list().filter((v) => v.name === "BootOrder").length, 1);
  assert.ok(s.records().length > s.list().length);
  // Same name, different GUIDs are different variables.
  assert.equal(s.list().filter((v) => v.name === "00155D000001").length, 2);
});

test("pristine templates: empty plain store, Secure Boot keys in .ms", () => {
  const plain = parseVarStore(fixture("pristine-OVMF_VARS.fd"));
  assert.equal(plain.list().length, 0);
  assert.equal(plain.freeBytes(), plain.layout.variablesEnd - plain.layout.variablesStart);
  const ms = parseVarStore(fixture("pristine-OVMF_VARS.ms.fd"));
  for (const [name, guid] of [["PK", G], ["KEK", G], ["db", GUIDS.imageSecurityDatabase], ["dbx", GUIDS.imageSecurityDatabase]] as const) {
    const v = ms.get(name, guid);
    assert.ok(v !== undefined, name);
    assert.ok((v.attributes & VA.TIME_BASED_AUTHENTICATED_WRITE_ACCESS) !== 0);
    assert.ok(v.timestamp !== null && v.timestamp.year >= 2020, `${name} carries its EFI_TIME`);
  }
  assert.deepEqual(ms.get("SecureBootEnable", "f0a30bc7-af08-4556-99c4-001009c93a44")?.data, bytes(1));
});

test("0x3e (ADDED & IN_DELETED_TRANSITION) is live when alone, an ADDED copy wins over it; two ADDED copies are damage", () => {
  const s = parseVarStore(buildVarStoreImage(4096));
  s.set("A", TEST_GUID, ATTRS_NV_BS_RT, bytes(1));
  s.set("A", TEST_GUID, ATTRS_NV_BS_RT, bytes(2));
  const two = s.toBuffer();
  const [first, newer] = parseVarStore(two).records();
  assert.equal(first!.state, 0x3c);
  // An update cut short after the new copy was written: the old one is still in transition.
  two[first!.offset + 2] = 0x3e;
  assert.deepEqual(parseVarStore(two).get("A", TEST_GUID)?.data, bytes(2), "ADDED beats in-transition");
  two[newer!.offset + 2] = 0x3c;
  assert.deepEqual(parseVarStore(two).get("A", TEST_GUID)?.data, bytes(1), "an in-transition copy is live when alone");
  two[first!.offset + 2] = VAR_STATE.HEADER_VALID_ONLY;
  assert.equal(parseVarStore(two).get("A", TEST_GUID), undefined, "half-written copies are not live");
  // edk2 marks the old copy before it writes the new one, so two ADDED copies mean damage
  // (here one set bit in the old copy's State): which one edk2 returns depends on order alone.
  two[first!.offset + 2] = VAR_STATE.ADDED;
  two[newer!.offset + 2] = VAR_STATE.ADDED;
  assert.throws(
    () => parseVarStore(two),
    (e: unknown) => e instanceof VarStoreError && e.code === "DUPLICATE_VARIABLE" && e.offset === newer!.offset && /0x64 and 0xA8/i.test(e.message),
  );
});

test("set: appends the new record, marks the old one deleted, touches nothing else", () => {
  const before = fixture("ovmf4m.fd");
  const s = parseVarStore(before);
  const old = s.records().find((r) => r.name === "Timeout" && r.state === VAR_STATE.ADDED)!;
  const endBefore = s.layout.variablesEnd - s.freeBytes();
  const r = s.set("Timeout", G, ATTRS_NV_BS_RT, bytes(5, 0));
  assert.deepEqual(r, { changed: true, compacted: false, offset: endBefore });
  const after = s.toBuffer();
  const changed = diffOffsets(before, after);
  const newEnd = s.layout.variablesEnd - s.freeBytes();
  for (const off of changed) assert.ok(off === old.offset + 2 || (off >= endBefore && off < newEnd), `byte 0x${off.toString(16)} changed`);
  assert.equal(after[old.offset + 2], 0x3c, "old copy: IN_DELETED_TRANSITION & DELETED");
  assert.deepEqual(s.get("Timeout", G)?.data, bytes(5, 0));
  const reparsed = parseVarStore(after);
  assert.deepEqual(reparsed.get("Timeout", G)?.data, bytes(5, 0));
  assert.deepEqual(reparsed.toBuffer(), after);
  const rec = reparsed.records().find((x) => x.offset === endBefore)!;
  assert.equal(rec.state, VAR_STATE.ADDED);
  assert.equal(rec.attributes, ATTRS_NV_BS_RT);
  assert.equal(rec.size, 60 + 16 + 2);
});

test("set: identical value is a no-op; empty data deletes; APPEND_WRITE appends", () => {
  const s = parseVarStore(fixture("ovmf2m.fd"));
  const before = s.toBuffer();
  const lang = s.get("Lang", G)!;
  assert.deepEqual(s.set("Lang", G, lang.attributes, lang.data), { changed: false, compacted: false, offset: -1 });
  assert.deepEqual(s.toBuffer(), before);
  s.set("X", TEST_GUID, 3, bytes(1, 2));
  s.set("X", TEST_GUID, 3 | VA.APPEND_WRITE, bytes(3));
  assert.deepEqual(s.get("X", TEST_GUID)?.data, bytes(1, 2, 3));
  assert.equal(s.get("X", TEST_GUID)?.attributes, 3, "APPEND_WRITE is not stored");
  s.set("X", TEST_GUID, 3, new Uint8Array(0));
  assert.equal(s.get("X", TEST_GUID), undefined);
});

test("delete: every live copy marked DELETED (0x3d); unknown names return false", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  const rec = s.records().find((r) => r.name === "Boot0006" && r.state === VAR_STATE.ADDED)!;
  assert.equal(s.delete("Boot0006", G), true);
  assert.equal(s.toBuffer()[rec.offset + 2], 0x3d);
  assert.equal(s.get("Boot0006", G), undefined);
  assert.equal(s.delete("Boot0006", G), false);
  assert.equal(s.delete("NoSuchVariable", G), false);
});

test("set: typed errors for bad names and attributes", () => {
  const s = parseVarStore(buildVarStoreImage(1024));
  assert.throws(() => s.set("", G, 7, bytes(1)), isVarStoreError("BAD_NAME"));
  assert.throws(() => s.set("a\0b", G, 7, bytes(1)), isVarStoreError("BAD_NAME"));
  assert.throws(() => s.set("V", G, VA.BOOTSERVICE_ACCESS, bytes(1)), isVarStoreError("BAD_ATTRIBUTES"));
  assert.throws(() => s.set("V", G, VA.NON_VOLATILE | VA.RUNTIME_ACCESS, bytes(1)), isVarStoreError("BAD_ATTRIBUTES"));
  assert.throws(() => s.set("V", "not-a-guid", 7, bytes(1)), (e: unknown) => e instanceof Error && (e as { code?: string }).code === "BAD_GUID");
});

test("set: timestamps are written for time-based variables and kept across updates", () => {
  const s = parseVarStore(buildVarStoreImage(2048));
  const t = efiTimeFromDate(new Date(Date.UTC(2026, 10, 21, 9, 30, 15)));
  const attrs = ATTRS_NV_BS_RT | VA.TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
  s.set("db", GUIDS.imageSecurityDatabase, attrs, bytes(1), { timestamp: t, monotonicCount: 7n });
  assert.deepEqual(s.get("db", GUIDS.imageSecurityDatabase)?.timestamp, t);
  assert.equal(s.get("db", GUIDS.imageSecurityDatabase)?.monotonicCount, 7n);
  s.set("db", GUIDS.imageSecurityDatabase, attrs, bytes(2));
  assert.deepEqual(s.get("db", GUIDS.imageSecurityDatabase)?.timestamp, t);
});

test("a full region is compacted keeping every live variable; bytes after the region never change", () => {
  const img = buildVarStoreImage(2048, 512);
  const s = parseVarStore(img);
  const tail = img.slice(s.layout.variablesEnd);
  const head = img.slice(0, s.layout.variablesStart);
  const model = new Map<string, Uint8Array>();
  let compactions = 0;
  for (let i = 0; i < 200; i++) {
    const name = `V${i % 7}`;
    const data = Uint8Array.from({ length: 20 + (i % 13) }, (_, j) => (i + j) & 0xff);
    const r = s.set(name, TEST_GUID, 7, data);
    model.set(name, data);
    if (r.compacted) compactions++;
    assert.deepEqual(new Map(s.list().map((v) => [v.name, v.data])), model, `after write ${i}`);
  }
  assert.ok(compactions > 5, `only ${compactions} compactions`);
  const out = s.toBuffer();
  assert.deepEqual(out.slice(s.layout.variablesEnd), tail);
  assert.deepEqual(out.slice(0, s.layout.variablesStart), head);
  const re = parseVarStore(out);
  assert.deepEqual(new Map(re.list().map((v) => [v.name, v.data])), model);
});

test("STORE_FULL when even compaction cannot fit; the store is left unchanged", () => {
  const s = parseVarStore(buildVarStoreImage(512));
  s.set("A", TEST_GUID, 7, new Uint8Array(200));
  s.set("B", TEST_GUID, 7, new Uint8Array(150));
  const before = s.toBuffer();
  assert.throws(() => s.set("C", TEST_GUID, 7, new Uint8Array(200)), isVarStoreError("STORE_FULL"));
  assert.deepEqual(s.toBuffer(), before);
  // Replacing a big variable with a same-size one fits after compaction (old copy dropped).
  for (let i = 0; i < 5; i++) s.set("A", TEST_GUID, 7, new Uint8Array(200).fill(i));
  assert.deepEqual(s.get("A", TEST_GUID)?.data, new Uint8Array(200).fill(4));
  assert.equal(s.get("B", TEST_GUID)?.data.length, 150);
});

/** The live variables of a store as comparable rows. */
function liveRows(s: VarStore): string[] {
  return s.list().map((v) => `${v.guid}/${v.name}=${Buffer.from(v.data).toString("hex")}`).sort();
}

test("C.8: one flipped byte in a record header is refused with its file and offset, never read as a shorter store", async () => {
  const pristine = fixture("pristine-OVMF_VARS.ms.fd");
  const good = parseVarStore(pristine);
  const pk = good.records().find((r) => r.name === "PK" && r.state === VAR_STATE.ADDED)!;
  const first = good.records()[0]!;
  // The issue's example: the first header's start mark damaged. edk2's walk stops there; read
  // that way the store is empty and the next write would drop PK, KEK, db and dbx.
  const flipped = pristine.slice();
  flipped[first.offset] = flipped[first.offset]! ^ 0x01;
  assert.throws(
    () => parseVarStore(flipped),
    (e: unknown) => e instanceof VarStoreError && e.code === "UNERASED_FREE_SPACE" && e.offset !== undefined && e.offset >= first.offset,
  );
  const dir = await mkdtemp(join(tmpdir(), "vmhost-fw-test-"));
  try {
    const file = join(dir, "nvram.fd");
    await writeFile(file, flipped);
    await assert.rejects(readVarStoreFile(file), (e: unknown) => {
      assert.ok(e instanceof VarStoreError);
      assert.equal(e.path, file);
      assert.ok(e.message.startsWith(`${file}: `), e.message);
      assert.match(e.message, /byte 0x[0-9A-F]+ after it is 0x[0-9A-F]+, not erased \(0xFF\)/);
      assert.ok(e.message.includes("0x" + e.offset!.toString(16).toUpperCase()));
      return true;
    });
    assert.deepEqual(new Uint8Array(await readFile(file)), flipped, "a refused store is left as it is");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  // Every header field that steers the walk, flipped one bit at a time: refused, or every
  // variable is still there. Never fewer.
  const expected = liveRows(good);
  let refused = 0;
  for (const r of good.records()) {
    const fields = [0, 1, 2, 36, 37, 38, 39, 40, 41, 42, 43];
    for (const f of fields) {
      for (const bit of [0x01, 0x02, 0x10, 0x80]) {
        const b = pristine.slice();
        b[r.offset + f] = b[r.offset + f]! ^ bit;
        let s: VarStore;
        try {
          s = parseVarStore(b);
        } catch (e) {
          assert.ok(e instanceof VarStoreError && e.offset !== undefined, String(e));
          refused++;
          continue;
        }
        const got = new Set(liveRows(s).map((x) => x.split("=")[0]));
        if (f === 2) continue; // a State flip to another state edk2 writes is a legitimate store
        for (const row of expected) assert.ok(got.has(row.split("=")[0]!), `flip 0x${bit.toString(16)} at 0x${(r.offset + f).toString(16)} lost ${row.split("=")[0]}`);
      }
    }
  }
  assert.ok(refused > good.records().length * 20, `${refused} refusals`);
  assert.equal(pk.name, "PK");
});

test("C.8: bytes after the last record that are not erased make the store damaged, named with their offset; never compacted", () => {
  const s0 = parseVarStore(buildVarStoreImage(1024));
  s0.set("A", TEST_GUID, 7, bytes(1));
  const buf = s0.toBuffer();
  const at = s0.layout.variablesEnd - 10;
  buf[at] = 0x00;
  assert.throws(() => parseVarStore(buf, { path: "/vm/nvram.fd" }), (e: unknown) =>
    e instanceof VarStoreError && e.code === "UNERASED_FREE_SPACE" && e.offset === at && e.path === "/vm/nvram.fd" &&
    e.message.startsWith("/vm/nvram.fd: ") && e.message.includes(`byte 0x${at.toString(16).toUpperCase()}`));
  // A store whose free space was zero-filled (as ovmfctl once wrote them) hides nothing, but
  // nothing tells it from a zeroed-out tail of variables either: refused the same way.
  const zeroed = s0.toBuffer();
  const end = s0.layout.variablesEnd - s0.freeBytes();
  zeroed.fill(0, end, s0.layout.variablesEnd);
  assert.throws(() => parseVarStore(zeroed), (e: unknown) => e instanceof VarStoreError && e.code === "UNERASED_FREE_SPACE" && e.offset === end);
  // Alignment padding is erased flash edk2 never programs: anything else there is damage too.
  const s1 = parseVarStore(buildVarStoreImage(1024));
  s1.set("Odd", TEST_GUID, 7, bytes(1)); // 60 + 8 + 1: three bytes of padding
  const padded = s1.toBuffer();
  const rec = s1.records()[0]!;
  padded[rec.offset + rec.size + 1] = 0;
  assert.throws(() => parseVarStore(padded), (e: unknown) => e instanceof VarStoreError && e.code === "BAD_PADDING" && e.offset === rec.offset + rec.size + 1);
});

test("C.8: a State byte edk2 cannot write, a name SetVariable cannot write, or a record past the end are refused with offsets", () => {
  const s = parseVarStore(buildVarStoreImage(1024));
  s.set("A", TEST_GUID, 7, bytes(1, 2, 3, 4));
  const good = s.toBuffer();
  const off = s.records()[0]!.offset;
  for (const state of [0x1f, 0x00, 0xbf, 0xfe, 0x7e]) {
    const b = good.slice();
    b[off + 2] = state;
    assert.throws(() => parseVarStore(b), (e: unknown) => e instanceof VarStoreError && e.code === "BAD_STATE" && e.offset === off + 2, `state 0x${state.toString(16)}`);
  }
  const noNul = good.slice();
  noNul[off + 60 + 2] = 0x41; // "A\0" -> "AA": no terminator
  assert.throws(() => parseVarStore(noNul), (e: unknown) => e instanceof VarStoreError && e.code === "BAD_NAME" && e.offset === off + 60);
  const huge = good.slice();
  new DataView(huge.buffer).setUint32(off + 40, 0x10000, true);
  assert.throws(() => parseVarStore(huge), (e: unknown) => e instanceof VarStoreError && e.code === "BAD_VARIABLE" && e.offset === off);
});

test("an append cut short (State still 0xFF, or a lone start byte) is what edk2 reclaims at start: read, reported, reclaimed before the next write", () => {
  const s0 = parseVarStore(buildVarStoreImage(2048));
  s0.set("A", TEST_GUID, 7, bytes(1));
  const before = s0.toBuffer();
  const end = s0.layout.variablesEnd - s0.freeBytes();
  s0.set("B", TEST_GUID, 7, new Uint8Array(40).fill(7));
  const full = s0.toBuffer();
  // QEMU killed while OVMF programmed B byte by byte: header, name and part of the data, no State.
  const cut = before.slice();
  cut.set(full.subarray(end, end + 60 + 4 + 20), end);
  cut[end + 2] = 0xff;
  const s = parseVarStore(cut);
  assert.deepEqual(s.interruptedWrite(), { offset: end, length: 60 + 4 + 40 });
  assert.deepEqual(s.list().map((v) => v.name), ["A"]);
  assert.deepEqual(s.toBuffer(), cut);
  const r = s.set("C", TEST_GUID, 7, bytes(3));
  assert.equal(r.compacted, true, "reclaimed first, as edk2 would at its next start");
  assert.equal(s.interruptedWrite(), null);
  assert.deepEqual(parseVarStore(s.toBuffer()).list().map((v) => v.name), ["A", "C"]);
  // One byte of the start mark written.
  const oneByte = before.slice();
  oneByte[end] = 0xaa;
  assert.deepEqual(parseVarStore(oneByte).interruptedWrite(), { offset: end, length: 1 });
  // The same unfinished record followed by more data is not an interrupted append: damage.
  const more = cut.slice();
  more[end + 60 + 40 + 64] = 0x12;
  assert.throws(() => parseVarStore(more), (e: unknown) => e instanceof VarStoreError && e.code === "UNERASED_FREE_SPACE");
});

test("compact(): live variables only, in place, same values", () => {
  const s = parseVarStore(fixture("ovmf4m.fd"));
  const live = s.list().map((v) => [v.name, v.guid, v.attributes, Array.from(v.data)]);
  const freeBefore = s.freeBytes();
  s.compact();
  assert.equal(s.records().length, live.length);
  assert.deepEqual(s.list().map((v) => [v.name, v.guid, v.attributes, Array.from(v.data)]).sort(), live.sort());
  assert.ok(s.freeBytes() > freeBefore);
  assert.deepEqual(s.toBuffer().slice(s.layout.variablesEnd), fixture("ovmf4m.fd").slice(s.layout.variablesEnd));
});

test("non-authenticated stores (32-byte headers) work too", () => {
  const s = parseVarStore(buildVarStoreImage(1024, 256, false));
  assert.equal(s.layout.authenticated, false);
  assert.equal(s.layout.recordHeaderSize, 32);
  s.set("BootOrder", G, 7, bytes(1, 0));
  s.set("BootOrder", G, 7, bytes(2, 0));
  const re = parseVarStore(s.toBuffer());
  assert.deepEqual(re.get("BootOrder", G)?.data, bytes(2, 0));
  assert.equal(re.get("BootOrder", G)?.timestamp, null);
  assert.equal(re.records().length, 2);
});

test("header validation gives typed errors", () => {
  const good = fixture("ovmf2m.fd");
  const mutate = (f: (b: Uint8Array, dv: DataView) => void): Uint8Array => {
    const b = good.slice();
    f(b, new DataView(b.buffer));
    return b;
  };
  const fixSum = (b: Uint8Array, dv: DataView): void => {
    dv.setUint16(0x32, 0, true);
    let sum = 0;
    for (let i = 0; i < 0x48; i += 2) sum = (sum + dv.getUint16(i, true)) & 0xffff;
    dv.setUint16(0x32, (0x10000 - sum) & 0xffff, true);
    void b;
  };
  const cases: [string, Uint8Array, string][] = [
    ["tiny", good.slice(0, 50), "TOO_SMALL"],
    ["signature", mutate((b) => (b[0x28] = 0x41)), "BAD_FV_SIGNATURE"],
    ["fs guid", mutate((b, dv) => { b[0x10] = b[0x10]! ^ 1; fixSum(b, dv); }), "BAD_FV_GUID"],
    ["checksum", mutate((b) => (b[0x2c] = b[0x2c]! ^ 0x10)), "BAD_FV_CHECKSUM"],
    ["header length", mutate((b, dv) => dv.setUint16(0x30, 0x47, true)), "BAD_FV_HEADER_LENGTH"],
    ["revision", mutate((b, dv) => { b[0x37] = 1; fixSum(b, dv); }), "BAD_FV_REVISION"],
    ["fv length", mutate((b, dv) => { dv.setBigUint64(0x20, 0x40000n, true); fixSum(b, dv); }), "BAD_FV_LENGTH"],
    ["fv shorter than the file", mutate((b, dv) => { dv.setBigUint64(0x20, 0x1f000n, true); dv.setUint32(0x38, 0x1f, true); fixSum(b, dv); }), "BAD_FV_LENGTH"],
    ["block map", mutate((b, dv) => { dv.setUint32(0x38, 0x1f, true); fixSum(b, dv); }), "BAD_FV_BLOCKMAP"],
    ["store guid", mutate((b) => (b[0x48] = b[0x48]! ^ 1)), "BAD_STORE_SIGNATURE"],
    ["store size", mutate((b, dv) => dv.setUint32(0x48 + 16, 0x30000, true)), "BAD_STORE_SIZE"],
    ["format", mutate((b) => (b[0x48 + 20] = 0)), "STORE_NOT_FORMATTED"],
    ["state", mutate((b) => (b[0x48 + 21] = 0xff)), "STORE_NOT_HEALTHY"],
    ["record overflow", mutate((b, dv) => dv.setUint32(0x64 + 40, 0x7fffffff, true)), "BAD_VARIABLE"],
  ];
  for (const [what, buf, code] of cases) assert.throws(() => parseVarStore(buf), isVarStoreError(code), what);
});

test("a record header left half-written (all-ones sizes) reads as empty, like edk2", () => {
  const s = parseVarStore(buildVarStoreImage(1024));
  s.set("A", TEST_GUID, 7, bytes(1));
  const b = s.toBuffer();
  const end = s.layout.variablesEnd - s.freeBytes();
  // StartId written, nothing else: edk2 steps over a 60-byte empty record.
  b[end] = 0xaa;
  b[end + 1] = 0x55;
  const re = parseVarStore(b);
  assert.equal(re.list().length, 1);
  assert.equal(re.records().length, 2);
  assert.deepEqual(re.toBuffer(), b);
});

test("VarStore instances never alias the caller's buffer", () => {
  const buf = fixture("ovmf2m.fd");
  const s = parseVarStore(buf);
  s.set("Timeout", G, 7, bytes(9, 9));
  assert.deepEqual(buf, fixture("ovmf2m.fd"));
  const out = s.toBuffer();
  out.fill(0);
  assert.deepEqual(s.get("Timeout", G)?.data, bytes(9, 9));
  assert.ok(s instanceof VarStore);
});

test("file helpers: atomic write in the same directory, mode kept, damaged files named", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-fw-test-"));
  try {
    const path = join(dir, "vm.fd");
    await writeFile(path, fixture("ovmf2m.fd"));
    await chmod(path, 0o640);
    const s = await readVarStoreFile(path);
    s.set("Timeout", G, 7, bytes(3, 0));
    await writeVarStoreFileAtomic(path, s);
    assert.deepEqual(await readdir(dir), ["vm.fd"], "no temporary file left");
    assert.equal((await stat(path)).mode & 0o777, 0o640);
    assert.deepEqual(new Uint8Array(await readFile(path)), s.toBuffer());
    assert.deepEqual((await readVarStoreFile(path)).get("Timeout", G)?.data, bytes(3, 0));
    const bad = join(dir, "bad.fd");
    await writeFile(bad, new Uint8Array(4096));
    await assert.rejects(readVarStoreFile(bad), (e: unknown) => e instanceof VarStoreError && e.code === "BAD_FV_SIGNATURE" && e.path === bad && e.message.includes(bad));
    await assert.rejects(readVarStoreFile(join(dir, "missing.fd")), isVarStoreError("IO"));
    await assert.rejects(writeVarStoreFileAtomic(join(dir, "no/such/dir.fd"), s), isVarStoreError("IO"));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("C.8: a store is checked against the firmware build it is used with; a mismatch names both sizes", async () => {
  const code4m = "/usr/share/OVMF/OVMF_CODE_4M.fd";
  const code2m = "/usr/share/OVMF/OVMF_CODE.fd";
  // Debian's files are the sizes OvmfPkgDefines.fdf.inc gives.
  assert.equal((await stat(code4m)).size, OVMF_FLASH_BUILDS.find((b) => b.name === "4M")!.codeSize);
  assert.equal((await stat(code2m)).size, OVMF_FLASH_BUILDS.find((b) => b.name === "2M")!.codeSize);
  assert.equal((await checkVarStoreFileForFirmware("/usr/share/OVMF/OVMF_VARS_4M.fd", code4m)).name, "4M");
  assert.equal(checkVarStoreForFirmware(parseVarStore(fixture("ovmf2m.fd")), 0x1e0000).name, "2M");
  assert.equal(checkVarStoreForFirmware(parseVarStore(fixture("ovmf2m.fd")), 0xe0000).name, "1M");
  // The example: a 128 KiB store from a 2M build with the 4M code.
  await assert.rejects(checkVarStoreFileForFirmware("/usr/share/OVMF/OVMF_VARS.fd", code4m), (e: unknown) => {
    assert.ok(e instanceof VarStoreError && e.code === "FIRMWARE_MISMATCH");
    assert.match(e.message, /OVMF_VARS\.fd \(131072 bytes, the 1M\/2M build's\)/);
    assert.match(e.message, /OVMF_CODE_4M\.fd \(3653632 bytes, the 4M build's\)/);
    assert.match(e.message, /540672-byte store/);
    assert.match(e.message, /nothing would persist/);
    return true;
  });
  assert.throws(() => checkVarStoreForFirmware(parseVarStore(fixture("ovmf4m.fd")), 0x1e0000), (e: unknown) =>
    e instanceof VarStoreError && e.code === "FIRMWARE_MISMATCH" && /540672 bytes/.test(e.message) && /1966080 bytes/.test(e.message));
  assert.throws(() => checkVarStoreForFirmware(parseVarStore(fixture("ovmf4m.fd")), 12345), /none of the OVMF builds/);
  // Right size, wrong inside: a small synthetic store padded to 128 KiB has another region size.
  const odd = parseVarStore(buildVarStoreImage(0x20000 - 0x48 - 28 - 0x1000, 0x1000));
  assert.equal(odd.layout.fileSize, 0x20000);
  assert.throws(() => checkVarStoreForFirmware(odd, 0x1e0000), /variable region ends at 126976, the 2M build's at 57344/);
});
