import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import {
  type KernelModule,
  ModuleTree,
  canonicalModuleName,
  installedModulePath,
  moduleNameFromPath,
  parseModinfo,
  parseSoftdepPre,
  renderModulesDep,
} from "../../src/images/appliance/modinfo.js";

/** A minimal ELF64 relocatable object with a .modinfo section (and a decoy section before it). */
function fakeKo(modinfo: Record<string, string | string[]>): Buffer {
  const items = Object.entries(modinfo).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => `${k}=${x}`));
  const info = Buffer.from(items.join("\0") + "\0", "utf8");
  const text = Buffer.from("\x90\x90\x90\x90");
  const shstr = Buffer.from("\0.text\0.modinfo\0.shstrtab\0", "latin1");
  const nameText = 1, nameModinfo = 7, nameShstr = 16;
  let off = 64;
  const textOff = off; off += text.length;
  const infoOff = off; off += info.length;
  const shstrOff = off; off += shstr.length;
  off = (off + 7) & ~7;
  const shoff = off;
  const shnum = 4;
  const buf = Buffer.alloc(shoff + shnum * 64);
  buf.write("\x7fELF", 0, "latin1");
  buf[4] = 2; buf[5] = 1; buf[6] = 1;
  buf.writeUInt16LE(1, 0x10); // ET_REL
  buf.writeUInt16LE(62, 0x12); // x86-64
  buf.writeUInt32LE(1, 0x14);
  buf.writeBigUInt64LE(BigInt(shoff), 0x28);
  buf.writeUInt16LE(64, 0x34);
  buf.writeUInt16LE(64, 0x3a);
  buf.writeUInt16LE(shnum, 0x3c);
  buf.writeUInt16LE(3, 0x3e);
  text.copy(buf, textOff);
  info.copy(buf, infoOff);
  shstr.copy(buf, shstrOff);
  const sh = (i: number, name: number, type: number, o: number, size: number) => {
    const b = shoff + i * 64;
    buf.writeUInt32LE(name, b);
    buf.writeUInt32LE(type, b + 4);
    buf.writeBigUInt64LE(BigInt(o), b + 0x18);
    buf.writeBigUInt64LE(BigInt(size), b + 0x20);
  };
  sh(1, nameText, 1, textOff, text.length);
  sh(2, nameModinfo, 1, infoOff, info.length);
  sh(3, nameShstr, 3, shstrOff, shstr.length);
  return buf;
}

test("parseModinfo reads key=value pairs, keeping repeated keys", () => {
  const mi = parseModinfo(fakeKo({ name: "ata_piix", depends: "libata,scsi_mod", alias: ["pci:v1", "pci:v2"], license: "GPL" }));
  assert.deepEqual(mi.fields.get("depends"), ["libata,scsi_mod"]);
  assert.deepEqual(mi.fields.get("alias"), ["pci:v1", "pci:v2"]);
  assert.deepEqual(mi.fields.get("name"), ["ata_piix"]);
  assert.throws(() => parseModinfo(Buffer.from("not an elf file at all, definitely not".repeat(3))), /not an ELF/);
});

test("module names: '-' equals '_', compression suffixes are dropped", () => {
  assert.equal(canonicalModuleName("crc-t10dif"), "crc_t10dif");
  assert.equal(moduleNameFromPath("kernel/lib/crc-t10dif.ko.xz"), "crc_t10dif");
  assert.equal(moduleNameFromPath("kernel/fs/fat/vfat.ko"), "vfat");
  assert.equal(installedModulePath("kernel/fs/fat/vfat.ko.zst"), "kernel/fs/fat/vfat.ko");
  assert.deepEqual(parseSoftdepPre("pre: crct10dif post: foo"), ["crct10dif"]);
  assert.deepEqual(parseSoftdepPre("post: a pre: b-c d"), ["b_c", "d"]);
});

test("ModuleTree.resolve: dependency order, built-ins, soft deps, gzip modules, cycles", async () => {
  const root = await mkdtemp(join(tmpdir(), "vmhost-modtree-"));
  try {
    const put = async (rel: string, data: Buffer) => {
      await mkdir(join(root, rel, ".."), { recursive: true });
      await writeFile(join(root, rel), data);
    };
    await put("kernel/drivers/ata/ata_piix.ko", fakeKo({ depends: "libata,scsi_mod" }));
    await put("kernel/drivers/ata/libata.ko", fakeKo({ depends: "scsi_mod" }));
    await put("kernel/drivers/scsi/scsi_mod.ko", fakeKo({ depends: "scsi_common", softdep: "pre: crc-helper" }));
    await put("kernel/drivers/scsi/scsi_common.ko", fakeKo({ depends: "" }));
    await put("kernel/lib/crc-helper.ko.gz", gzipSync(fakeKo({ depends: "" })));
    await put("kernel/misc/cyc_a.ko", fakeKo({ depends: "cyc_b" }));
    await put("kernel/misc/cyc_b.ko", fakeKo({ depends: "cyc_a" }));
    await put("kernel/misc/needs_missing.ko", fakeKo({ depends: "nowhere" }));
    await writeFile(join(root, "modules.builtin"), "kernel/drivers/tty/serial/8250.ko\n");

    const tree = await ModuleTree.open(root);
    const { order, builtin } = await tree.resolve(["ata_piix", "8250"]);
    assert.deepEqual(order.map((m) => m.name), ["crc_helper", "scsi_common", "scsi_mod", "libata", "ata_piix"]);
    assert.deepEqual(builtin, ["8250"]);
    await assert.rejects(tree.resolve(["cyc_a"]), /cycle/);
    await assert.rejects(tree.resolve(["needs_missing"]), /nowhere not found.*needed by needs_missing/);
    await assert.rejects(tree.resolve(["no_such_module"]), /no_such_module not found/);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test("renderModulesDep: full dependency closure, last entry loads first", () => {
  const m = (name: string, depends: string[]): KernelModule => ({ name, relPath: `kernel/${name}.ko`, depends, softdepPre: [] });
  const order = [m("scsi_common", []), m("scsi_mod", ["scsi_common"]), m("libata", ["scsi_mod"]), m("ata_piix", ["libata", "scsi_mod"]), m("fat", []), m("vfat", ["fat"])];
  assert.equal(
    renderModulesDep(order),
    [
      "kernel/scsi_common.ko:",
      "kernel/scsi_mod.ko: kernel/scsi_common.ko",
      "kernel/libata.ko: kernel/scsi_mod.ko kernel/scsi_common.ko",
      "kernel/ata_piix.ko: kernel/libata.ko kernel/scsi_mod.ko kernel/scsi_common.ko",
      "kernel/fat.ko:",
      "kernel/vfat.ko: kernel/fat.ko",
      "",
    ].join("\n"),
  );
});
