import assert from "node:assert/strict";
import { copyFile, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createDisk, createOverlay, diskInfo, formatFromPath, formatSize, parseSize } from "../../src/images/disk.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

describe("parseSize", () => {
  it("parses plain bytes and binary units", () => {
    assert.equal(parseSize("1048576"), 1048576);
    assert.equal(parseSize("512M"), 512 * MiB);
    assert.equal(parseSize("20G"), 20 * GiB);
    assert.equal(parseSize("1.5GiB"), 1.5 * GiB);
    assert.equal(parseSize("64k"), 64 * KiB);
    assert.equal(parseSize("2 TB"), 2 * 1024 * GiB);
    assert.equal(parseSize("100MB"), 100 * MiB);
    assert.equal(parseSize("0.5K"), 512);
    assert.equal(parseSize(" 4096B "), 4096);
    assert.equal(parseSize("0"), 0);
  });

  it("rejects bad input with a clear message", () => {
    for (const bad of ["", "abc", "-1G", "1..5G", "10X", "G", "1e9", "1,5G", "12 34"]) {
      assert.throws(() => parseSize(bad), /invalid size/, bad);
    }
    assert.throws(() => parseSize("10X"), /unknown unit "X"/);
    assert.throws(() => parseSize("1.1B"), /not a whole number of bytes/);
    assert.throws(() => parseSize("0.3K"), /not a whole number of bytes/);
    assert.throws(() => parseSize("100000P"), /too large/);
  });
});

describe("formatSize", () => {
  it("picks the largest unit and round-trips exact values", () => {
    assert.equal(formatSize(0), "0 B");
    assert.equal(formatSize(1000), "1000 B");
    assert.equal(formatSize(512 * MiB), "512 MiB");
    assert.equal(formatSize(20 * GiB), "20 GiB");
    assert.equal(formatSize(1.5 * GiB), "1.5 GiB");
    assert.equal(formatSize(1.25 * 1024 * GiB), "1.25 TiB");
    for (const n of [512, 64 * KiB, 512 * MiB, 1.5 * GiB, 20 * GiB]) assert.equal(parseSize(formatSize(n)), n);
  });

  it("rejects negative and non-finite counts", () => {
    assert.throws(() => formatSize(-1), /invalid byte count/);
    assert.throws(() => formatSize(Number.NaN), /invalid byte count/);
  });
});

describe("formatFromPath", () => {
  it("maps extensions", () => {
    assert.equal(formatFromPath("/a/b/disk.vhdx"), "vhdx");
    assert.equal(formatFromPath("disk.QCOW2"), "qcow2");
    assert.equal(formatFromPath("disk.img"), "raw");
    assert.equal(formatFromPath("disk.raw"), "raw");
    assert.equal(formatFromPath("disk.vhd"), undefined);
    assert.equal(formatFromPath("/a.vhdx/disk"), undefined);
    assert.equal(formatFromPath("noext"), undefined);
  });
});

describe("disk images via qemu-img", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "vmhost-disk-test-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("creates a dynamic vhdx", async () => {
    const p = join(dir, "a.vhdx");
    await createDisk(p, 10 * GiB, "vhdx");
    const info = await diskInfo(p);
    assert.equal(info.path, p);
    assert.equal(info.format, "vhdx");
    assert.equal(info.virtualSize, 10 * GiB);
    assert.ok(info.actualSize > 0 && info.actualSize < 16 * MiB, `dynamic: ${info.actualSize} bytes allocated`);
    assert.equal(info.dirty, false);
    assert.equal(info.backingFile, undefined);
  });

  it("creates qcow2 and raw", async () => {
    const q = join(dir, "b.qcow2");
    await createDisk(q, parseSize("512M"), "qcow2");
    const qi = await diskInfo(q);
    assert.equal(qi.format, "qcow2");
    assert.equal(qi.virtualSize, 512 * MiB);

    const r = join(dir, "c.img");
    await createDisk(r, 64 * MiB, "raw");
    const ri = await diskInfo(r, { format: "raw" });
    assert.equal(ri.format, "raw");
    assert.equal(ri.virtualSize, 64 * MiB);
    assert.equal((await stat(r)).size, 64 * MiB);
  });

  it("refuses to overwrite and leaves no temp files", async () => {
    const p = join(dir, "exists.vhdx");
    await writeFile(p, "precious");
    await assert.rejects(createDisk(p, GiB, "vhdx"), /already exists; refusing to overwrite it/);
    await assert.rejects(createOverlay(p, join(dir, "a.vhdx"), "vhdx"), /already exists/);
    assert.equal((await stat(p)).size, "precious".length);
    const names = await readdir(dir);
    assert.deepEqual(names.filter((n) => n.endsWith(".tmp")), []);
  });

  it("rejects bad sizes and formats before calling qemu-img", async () => {
    await assert.rejects(createDisk(join(dir, "z.vhdx"), 0, "vhdx"), /positive whole number/);
    await assert.rejects(createDisk(join(dir, "z.vhdx"), 1000, "vhdx"), /multiple of 512/);
    await assert.rejects(createDisk(join(dir, "z.vhdx"), 1.5, "vhdx"), /positive whole number/);
    await assert.rejects(createDisk(join(dir, "z.bin"), GiB, "vmdk" as "raw"), /unknown disk format "vmdk"/);
  });

  it("creates a qcow2 overlay on a vhdx base with an absolute backing path", async () => {
    const base = join(dir, "base.vhdx");
    await createDisk(base, 2 * GiB, "vhdx");
    const overlay = join(dir, "diff.qcow2");
    await createOverlay(overlay, base, "vhdx");
    const info = await diskInfo(overlay);
    assert.equal(info.format, "qcow2");
    assert.equal(info.virtualSize, 2 * GiB);
    assert.equal(info.backingFile, base);
    assert.equal(info.backingFormat, "vhdx");
    assert.equal(info.dirty, false);
  });

  it("reports qemu-img's own message", async () => {
    // A file with qcow2's magic and nothing sensible after it: the format check passes, qemu-img refuses.
    const bad = join(dir, "bad.qcow2");
    await writeFile(bad, Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb]), Buffer.alloc(508, 0xee)]));
    await assert.rejects(diskInfo(bad), (err: Error) => {
      assert.match(err.message, /^qemu-img info failed: Could not open .*bad\.qcow2.*/);
      return true;
    });
    await assert.rejects(createOverlay(join(dir, "o.qcow2"), join(dir, "nobase.vhdx"), "vhdx"), /backing image .*nobase\.vhdx not found/);
    // qemu-img refuses a vhdx larger than 64 TiB.
    await assert.rejects(createDisk(join(dir, "huge.vhdx"), 65 * 1024 * 1024 * MiB, "vhdx"), /qemu-img create failed: .+/);
    const names = await readdir(dir);
    assert.ok(!names.includes("huge.vhdx"));
    assert.deepEqual(names.filter((n) => n.endsWith(".tmp")), []);
  });

  it("never lets qemu-img probe: the format comes from the caller or the extension and must match the content", async () => {
    await assert.rejects(diskInfo(join(dir, "missing.qcow2")), /disk image .*missing\.qcow2 not found/);
    // Told the wrong format, vmhost refuses before qemu-img opens anything.
    await assert.rejects(diskInfo(join(dir, "b.qcow2"), { format: "vhdx" }), /b\.qcow2: it was declared vhdx, but it holds a qcow2 header/);
    // A ".img" holding qcow2 is not read as qcow2 (that is how a hostile image picks its backing file).
    const disguised = join(dir, "disguised.img");
    await createDisk(join(dir, "real.qcow2"), 8 * MiB, "qcow2");
    await copyFile(join(dir, "real.qcow2"), disguised);
    await assert.rejects(diskInfo(disguised), /disguised\.img: its extension says raw, but it holds a qcow2 header/);
    // No extension, no declaration: no guess.
    const bare = join(dir, "bare");
    await writeFile(bare, Buffer.alloc(MiB));
    await assert.rejects(diskInfo(bare), /cannot tell the format of .*bare from its name/);
    assert.equal((await diskInfo(bare, { format: "raw" })).virtualSize, MiB);
    // A backing file must hold what the overlay will record.
    await assert.rejects(createOverlay(join(dir, "o2.qcow2"), disguised, "raw"), /disguised\.img: it was declared raw, but it holds a qcow2 header/);
    await assert.rejects(createOverlay(join(dir, "o3.qcow2"), dir, "raw"), /is a directory, not a disk image file/);
    assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith("o2") || n.startsWith("o3")), []);
  });

  it("creates a dynamic VHD of the exact size asked for", async () => {
    const p = join(dir, "d.vhd");
    await createDisk(p, 10 * MiB, "vhd");
    const info = await diskInfo(p);
    assert.equal(info.format, "vpc");
    // Without force_size QEMU would round 10 MiB up to a CHS geometry (10514432 bytes).
    assert.equal(info.virtualSize, 10 * MiB);
    assert.ok((await stat(p)).size < MiB, "dynamic: the file holds headers only");
  });
});
