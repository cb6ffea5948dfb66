// Checks a built appliance in the cache (no QEMU): the initramfs contents, the module graph
// against the real Debian modules, and both disks' partition tables and files. Skips when no
// appliance has been built yet (the integration tests or `vmhost` build one).
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, open, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { type CpioEntry, readNewc } from "../../src/images/appliance/cpio.js";
import { type ApplianceManifest, defaultApplianceCacheDir } from "../../src/images/appliance/index.js";
import { APPLIANCE_MODULES } from "../../src/images/appliance/initramfs.js";
import { ModuleTree, canonicalModuleName, modinfoValue, moduleNameFromPath, parseModinfo } from "../../src/images/appliance/modinfo.js";

const cacheDir = defaultApplianceCacheDir();

async function newestBuild(): Promise<{ dir: string; manifest: ApplianceManifest } | undefined> {
  let best: { dir: string; manifest: ApplianceManifest; mtime: number } | undefined;
  for (const f of await readdir(cacheDir).catch(() => [] as string[])) {
    if (!/^[0-9a-f]{12}$/.test(f)) continue;
    const m = join(cacheDir, f, "manifest.json");
    if (!existsSync(m)) continue;
    const mtime = (await stat(m)).mtimeMs;
    if (!best || mtime > best.mtime) best = { dir: join(cacheDir, f), manifest: JSON.parse(await readFile(m, "utf8")) as ApplianceManifest, mtime };
  }
  return best;
}

const build = await newestBuild();
const skip = build ? false : `no built appliance in ${cacheDir} (set VMHOST_APPLIANCE_CACHE or run the appliance integration test first)`;
let files = new Map<string, CpioEntry>();

before(async () => {
  if (!build) return;
  const entries = readNewc(gunzipSync(await readFile(join(build.dir, build.manifest.initrd))));
  files = new Map(entries.map((e) => [e.path, e]));
});

function file(path: string): Buffer {
  const e = files.get(path);
  assert.ok(e && e.type === "file", `${path} is a file in the initramfs`);
  return e.data;
}

test("manifest names the kernel, the packages and the disks", { skip }, () => {
  const m = build!.manifest;
  assert.equal(m.formatVersion, 1);
  assert.equal(m.kernel.metapackage, "linux-image-amd64");
  assert.equal(m.kernel.package, `linux-image-${m.kernel.release}`);
  assert.equal(m.packages[m.kernel.package], m.kernel.version);
  for (const p of ["linux-image-amd64", "busybox-static", "shim-signed", "grub-efi-amd64-signed", "syslinux-common", "qemu-guest-agent", "efibootmgr", "libc6"])
    assert.ok(m.packages[p], `packages lists ${p}`);
  assert.equal(m.cmdline, "console=ttyS0,115200 quiet");
  assert.equal(m.diskFormat, "raw");
});

test("initramfs: init, busybox applets, guest agent, efibootmgr and config files", { skip }, () => {
  const init = files.get("init");
  assert.ok(init?.type === "file" && init.mode === 0o755);
  assert.match(init.data.toString(), /echo "vmhost-appliance: ready"/);
  assert.deepEqual(files.get("dev/console"), { type: "char", path: "dev/console", mode: 0o600, major: 5, minor: 1 });
  assert.equal(file("bin/busybox").readUInt32BE(0), 0x7f454c46);
  for (const applet of ["bin/sh", "sbin/acpid", "usr/bin/setsid", "bin/cttyhack", "sbin/udhcpc", "sbin/insmod", "sbin/modprobe"])
    assert.deepEqual(files.get(applet), { type: "symlink", path: applet, target: "/bin/busybox" }, applet);
  // Real scripts, not applet links: PID 1 is a shell, so power actions must be forced.
  assert.match(file("sbin/shutdown").toString(), /-r\) action=reboot/);
  assert.match(file("sbin/poweroff").toString(), /poweroff -f/);
  assert.match(file("etc/acpi/PWRF/00000080").toString(), /poweroff -f/);
  assert.match(file("etc/udhcpc/default.script").toString(), /ip -4 addr replace/);
  assert.equal(file("usr/sbin/qemu-ga").readUInt32BE(0), 0x7f454c46);
  assert.equal(file("usr/bin/efibootmgr").readUInt32BE(0), 0x7f454c46);
  assert.ok(files.has("lib64/ld-linux-x86-64.so.2"));
  const libs = [...files.keys()].filter((p) => /\.so(\.|$)/.test(p));
  for (const lib of ["libc.so.6", "libglib-2.0.so.0", "libefivar.so.1", "libefiboot.so.1"]) assert.ok(libs.some((p) => p.endsWith("/" + lib)), lib);
  assert.equal(files.get("var/lib/hyperv")?.type, "dir");
  const osr = file("etc/os-release").toString();
  assert.match(osr, /^ID=vmhost-appliance$/m);
  assert.match(osr, /^NAME="vmhost appliance"$/m);
  assert.match(osr, /^VERSION_ID="\d+(\.\d+)?"$/m);
  assert.match(osr, /^PRETTY_NAME=".+"$/m);
});

test("initramfs: modules load in dependency order and modules.dep matches their .modinfo", { skip }, () => {
  const rel = build!.manifest.kernel.release;
  const modDir = `lib/modules/${rel}/`;
  const load = file("etc/vmhost/modules.load").toString().trim().split("\n");
  const names = load.map(moduleNameFromPath);
  for (const want of APPLIANCE_MODULES) assert.ok(names.includes(canonicalModuleName(want)), `${want} is loaded at boot`);
  const dep = new Map(
    file(`${modDir}modules.dep`).toString().trim().split("\n").map((l) => {
      const [k, v] = l.split(":");
      return [k!, (v ?? "").trim().split(/\s+/).filter(Boolean)] as const;
    }),
  );
  const seen = new Set<string>();
  for (const path of load) {
    const info = parseModinfo(file(modDir + path));
    assert.ok(modinfoValue(info, "vermagic")?.startsWith(rel + " "), `${path} is built for ${rel}`);
    const depends = (modinfoValue(info, "depends") ?? "").split(",").filter(Boolean).map(canonicalModuleName);
    for (const d of depends) assert.ok(seen.has(d), `${path}: dependency ${d} is loaded before it`);
    const listed = (dep.get(path) ?? []).map(moduleNameFromPath);
    for (const d of depends) assert.ok(listed.includes(d), `modules.dep lists ${d} for ${path}`);
    // modprobe loads from the end of the list: every dependency's own deps come after it.
    const listedPaths = dep.get(path) ?? [];
    for (const [i, dp] of listedPaths.entries())
      for (const ddp of dep.get(dp) ?? []) assert.ok(listedPaths.indexOf(ddp) > i, `${dp} before ${ddp} in the modules.dep line of ${path}`);
    seen.add(moduleNameFromPath(path));
  }
  assert.equal(dep.size, load.length);
});

test("the real Debian module tree resolves to the same load order", { skip, timeout: 120_000 }, async (t) => {
  const debs = await readdir(join(cacheDir, "debs")).catch(() => [] as string[]);
  const deb = debs.find((f) => f.startsWith(`${build!.manifest.kernel.package}_`));
  if (!deb) return t.skip(`no ${build!.manifest.kernel.package} .deb in ${join(cacheDir, "debs")}`);
  const x = await mkdtemp(join(tmpdir(), "vmhost-kernel-"));
  try {
    execFileSync("dpkg-deb", ["-x", join(cacheDir, "debs", deb), x]);
    const tree = await ModuleTree.open(join(x, "lib/modules", build!.manifest.kernel.release));
    assert.ok(tree.paths.size > 1000, `${tree.paths.size} modules indexed`);
    const { order } = await tree.resolve(APPLIANCE_MODULES);
    assert.deepEqual(order.map((m) => m.relPath), file("etc/vmhost/modules.load").toString().trim().split("\n"));
    const piix = await tree.module("ata_piix");
    assert.ok(piix.depends.includes("libata"), `ata_piix depends on ${piix.depends.join(",")}`);
    const vfat = await tree.module("vfat");
    assert.deepEqual(vfat.depends, ["fat"]);
  } finally {
    await rm(x, { recursive: true, force: true });
  }
});

async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, "r");
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, offset);
    return b;
  } finally {
    await fh.close();
  }
}

function mdir(image: string, dir: string): string {
  return execFileSync("mdir", ["-i", `${image}@@1048576`, "-a", "-b", dir], { env: { ...process.env, MTOOLS_SKIP_CHECK: "1" } }).toString();
}

function mtype(image: string, path: string): string {
  return execFileSync("mtype", ["-i", `${image}@@1048576`, path], { env: { ...process.env, MTOOLS_SKIP_CHECK: "1" } }).toString();
}

test("gen1 disk: MBR with SYSLINUX boot code, one bootable FAT16 partition at 1 MiB", { skip }, async () => {
  const img = join(build!.dir, build!.manifest.gen1Disk);
  const mbr = await readAt(img, 0, 512);
  assert.equal(mbr.readUInt16LE(510), 0xaa55);
  assert.equal(mbr[446], 0x80, "partition 1 is bootable");
  assert.equal(mbr[446 + 4], 0x06, "FAT16 partition type");
  assert.equal(mbr.readUInt32LE(446 + 8), 2048);
  if (existsSync("/usr/lib/syslinux/mbr/mbr.bin")) {
    const code = await readFile("/usr/lib/syslinux/mbr/mbr.bin");
    assert.deepEqual(mbr.subarray(0, Math.min(440, code.length)), code.subarray(0, 440));
  }
  const vbr = await readAt(img, 2048 * 512, 512);
  assert.equal(vbr.toString("ascii", 54, 62), "FAT16   ");
  assert.equal(vbr.readUInt32LE(28), 2048, "hidden sectors = partition start");
  const root = mdir(img, "::/");
  for (const f of ["ldlinux.sys", "ldlinux.c32", "syslinux.cfg", "vmlinuz", "initrd.img"]) assert.match(root, new RegExp(`::/${f.replace(".", "\\.")}$`, "mi"));
  assert.match(mtype(img, "::/syslinux.cfg"), /^SERIAL 0 115200$[\s\S]*APPEND console=ttyS0,115200 quiet$/m);
});

test("gen2 disk: GPT with an ESP holding shim + GRUB in \\EFI\\BOOT and \\EFI\\debian", { skip }, async () => {
  const img = join(build!.dir, build!.manifest.gen2Disk);
  const pmbr = await readAt(img, 0, 512);
  assert.equal(pmbr.readUInt16LE(510), 0xaa55);
  assert.equal(pmbr[446 + 4], 0xee, "protective MBR");
  const hdr = await readAt(img, 512, 92);
  assert.equal(hdr.toString("ascii", 0, 8), "EFI PART");
  const entry = await readAt(img, 1024, 128);
  // C12A7328-F81F-11D2-BA4B-00A0C93EC93B in GPT's mixed-endian encoding
  assert.equal(entry.subarray(0, 16).toString("hex"), "28732ac11ff8d211ba4b00a0c93ec93b");
  assert.equal(Number(entry.readBigUInt64LE(32)), 2048);
  const vbr = await readAt(img, 2048 * 512, 512);
  assert.equal(vbr.toString("ascii", 82, 90), "FAT32   ");

  const boot = mdir(img, "::/EFI/BOOT").toLowerCase();
  for (const f of ["bootx64.efi", "grubx64.efi", "grub.cfg"]) assert.ok(boot.includes(`/efi/boot/${f}`), `\\EFI\\BOOT\\${f}`);
  assert.ok(!boot.includes("fbx64"), "no fallback in \\EFI\\BOOT");
  const debian = mdir(img, "::/EFI/debian").toLowerCase();
  for (const f of ["shimx64.efi", "grubx64.efi", "grub.cfg", "bootx64.csv"]) assert.ok(debian.includes(`/efi/debian/${f}`), `\\EFI\\debian\\${f}`);
  const cfg = mtype(img, "::/EFI/debian/grub.cfg");
  assert.match(cfg, /^set timeout=0$/m);
  assert.match(cfg, /^linux \/vmlinuz console=ttyS0,115200 quiet$/m);
  assert.match(cfg, /^initrd \/initrd\.img$/m);
  assert.equal(mtype(img, "::/EFI/BOOT/grub.cfg"), cfg);
  const root = mdir(img, "::/").toLowerCase();
  assert.ok(root.includes("::/vmlinuz") && root.includes("::/initrd.img"));
});
