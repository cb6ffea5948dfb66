import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, open, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { checkDeclaredFormat, formatFromExtension, ImageFormatMismatchError, NotRegularFileError, readImageContent } from "../../src/images/format.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

async function qemuImg(...args: string[]): Promise<void> {
  await run("qemu-img", args);
}

describe("formatFromExtension", () => {
  it("maps the four formats' extensions, any case, and nothing else", () => {
    assert.equal(formatFromExtension("/a/b/disk.vhdx"), "vhdx");
    assert.equal(formatFromExtension("disk.VHD"), "vhd");
    assert.equal(formatFromExtension("disk.qcow2"), "qcow2");
    assert.equal(formatFromExtension("disk.img"), "raw");
    assert.equal(formatFromExtension("disk.raw"), "raw");
    assert.equal(formatFromExtension("disk.avhdx"), undefined);
    assert.equal(formatFromExtension("disk.vmdk"), undefined);
    assert.equal(formatFromExtension("/a.vhdx/disk"), undefined);
  });
});

describe("checkDeclaredFormat on images qemu-img made", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "vmhost-format-test-"));
    await qemuImg("create", "-q", "-f", "qcow2", join(dir, "a.qcow2"), "8M");
    await qemuImg("create", "-q", "-f", "vhdx", "-o", "subformat=dynamic", join(dir, "dyn.vhdx"), "8M");
    await qemuImg("create", "-q", "-f", "vhdx", "-o", "subformat=fixed", join(dir, "fixed.vhdx"), "8M");
    await qemuImg("create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", join(dir, "dyn.vhd"), "8M");
    await qemuImg("create", "-q", "-f", "vpc", "-o", "subformat=fixed,force_size=on", join(dir, "fixed.vhd"), "8M");
    await qemuImg("create", "-q", "-f", "raw", join(dir, "plain.img"), "8M");
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("accepts each format under its own extension and tells fixed from dynamic", async () => {
    const expect: [string, string, string][] = [
      ["a.qcow2", "qcow2", "Dynamic"],
      ["dyn.vhdx", "vhdx", "Dynamic"],
      ["fixed.vhdx", "vhdx", "Fixed"],
      ["dyn.vhd", "vhd", "Dynamic"],
      ["fixed.vhd", "vhd", "Fixed"],
      ["plain.img", "raw", "Fixed"],
    ];
    for (const [name, format, type] of expect) {
      const c = await checkDeclaredFormat(join(dir, name));
      assert.equal(c.format, format, name);
      assert.equal(c.source, "extension", name);
      assert.equal(c.vhdType, type, name);
    }
    const fixed = await readImageContent(join(dir, "fixed.vhd"));
    assert.equal(fixed.vhdDiskType, 2);
    assert.equal(fixed.fileSize, 8 * MiB + 512, "a fixed VHD is its data plus a 512-byte footer");
    assert.equal((await readImageContent(join(dir, "dyn.vhd"))).vhdDiskType, 3);
    assert.deepEqual((await readImageContent(join(dir, "fixed.vhdx"))).vhdxParameters?.leaveBlocksAllocated, true);
  });

  it("a declared format overrides the extension, and is checked the same way", async () => {
    const c = await checkDeclaredFormat(join(dir, "a.qcow2"), "qcow2");
    assert.equal(c.source, "declared");
    const noExt = join(dir, "noext");
    await copyFile(join(dir, "dyn.vhdx"), noExt);
    assert.equal((await checkDeclaredFormat(noExt, "vhdx")).format, "vhdx");
    await assert.rejects(checkDeclaredFormat(noExt), (e: Error) => e instanceof Error && /cannot tell the format of .*noext from its name/.test(e.message));
    await assert.rejects(checkDeclaredFormat(noExt, "vmdk"), /unknown disk format "vmdk"/);
  });

  it("never takes a fixed VHD for raw: its footer would be the guest's to overwrite", async () => {
    const asRaw = join(dir, "fixed-vhd-renamed.img");
    await copyFile(join(dir, "fixed.vhd"), asRaw);
    await assert.rejects(checkDeclaredFormat(asRaw), (e: unknown) => {
      assert.ok(e instanceof ImageFormatMismatchError);
      assert.equal(e.path, asRaw);
      assert.equal(e.claimed, "raw");
      assert.equal(e.source, "extension");
      assert.equal(e.holds, "vhd");
      assert.match(e.message, /fixed-vhd-renamed\.img: its extension says raw, but it holds a VHD footer \("conectix" in the last 512 bytes, disk type fixed\)/);
      assert.match(e.message, /never hands it to QEMU as raw/);
      return true;
    });
    await assert.rejects(checkDeclaredFormat(join(dir, "fixed.vhd"), "raw"), /it was declared raw, but it holds a VHD footer/);
  });

  it("refuses every other mismatch, naming the file, the claim and the content", async () => {
    const cases: [string, string, RegExp][] = [
      ["a.qcow2", "vhdx", /a\.qcow2: it was declared vhdx, but it holds a qcow2 header \(magic "QFI\\xfb" at offset 0\)/],
      ["dyn.vhdx", "qcow2", /dyn\.vhdx: it was declared qcow2, but it holds a VHDX header \("vhdxfile" at offset 0\)/],
      ["plain.img", "vhd", /plain\.img: it was declared vhd, but it holds no qcow2, VHDX or VHD signature \(raw data\)/],
      ["dyn.vhd", "raw", /dyn\.vhd: it was declared raw, but it holds a VHD footer \("conectix" at offset 0, disk type dynamic\)/],
      ["a.qcow2", "raw", /it was declared raw, but it holds a qcow2 header/],
    ];
    for (const [name, claim, re] of cases) {
      await assert.rejects(checkDeclaredFormat(join(dir, name), claim), (e: unknown) => e instanceof ImageFormatMismatchError && re.test(e.message), `${name} as ${claim}`);
    }
  });

  it("a raw disk whose guest wrote a qcow2 header into sector 0 stays refused as raw", async () => {
    const p = join(dir, "guest-wrote.img");
    await copyFile(join(dir, "plain.img"), p);
    const fh = await open(p, "r+");
    await fh.write(Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]), 0, 8, 0);
    await fh.close();
    await assert.rejects(checkDeclaredFormat(p), /guest-wrote\.img: its extension says raw, but it holds a qcow2 header/);
  });

  it("refuses a differencing VHD, which QEMU would read without its parent", async () => {
    const p = join(dir, "diff.vhd");
    await copyFile(join(dir, "dyn.vhd"), p);
    // Disk Type (footer offset 60, big-endian) = 4, in the copy at offset 0 that QEMU reads first.
    const fh = await open(p, "r+");
    const four = Buffer.alloc(4);
    four.writeUInt32BE(4);
    await fh.write(four, 0, 4, 60);
    await fh.close();
    await assert.rejects(checkDeclaredFormat(p), /diff\.vhd is a differencing VHD: QEMU cannot follow its parent/);
  });

  it("refuses what is not a regular file", async () => {
    const sub = join(dir, "folder.img");
    await mkdir(sub);
    await assert.rejects(checkDeclaredFormat(sub), (e: unknown) => e instanceof NotRegularFileError && /folder\.img is a directory/.test(e.message));
    await assert.rejects(checkDeclaredFormat("/dev/null", "raw"), /\/dev\/null is a character device, not a disk image file/);
    await assert.rejects(checkDeclaredFormat(join(dir, "absent.qcow2")), /disk image .*absent\.qcow2 not found/);
  });

  it("a tiny or empty file is raw data, not a VHD", async () => {
    const p = join(dir, "tiny.img");
    await writeFile(p, "conectix");
    assert.equal((await checkDeclaredFormat(p)).format, "raw");
    assert.equal((await stat(p)).size, 8);
  });
});

describe("VHD request schemas", () => {
  it("accept well-formed requests and refuse the rest with a reason", async () => {
    const { NewVhdRequestSchema, ResizeVhdRequestSchema, ConvertVhdRequestSchema } = await import("../../src/images/vhd-api.js");
    assert.ok(NewVhdRequestSchema.safeParse({ path: "/d/a.vhd", sizeBytes: 1048576, type: "Fixed" }).success);
    assert.ok(NewVhdRequestSchema.safeParse({ path: "/d/c.qcow2", parent: { path: "/d/a.vhd" } }).success);
    const noSize = NewVhdRequestSchema.safeParse({ path: "/d/a.vhd" });
    assert.ok(!noSize.success && /give the new disk's size/.test(noSize.error.message));
    assert.ok(!NewVhdRequestSchema.safeParse({ path: "/d/a.vhd", sizeBytes: 1000 }).success);
    assert.ok(!NewVhdRequestSchema.safeParse({ path: "/d/a.vmdk", sizeBytes: 512, format: "vmdk" }).success);
    assert.ok(!ResizeVhdRequestSchema.safeParse({ path: "/d/a.vhd", sizeBytes: -512 }).success);
    assert.ok(!ConvertVhdRequestSchema.safeParse({ source: "/a.img", destination: "/b.vhdx", extra: 1 }).success);
  });
});
