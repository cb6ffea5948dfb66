// inspect() and convert() on real disk images: synthetic ones made here with sfdisk, mtools,
// syslinux and mkfs.ext4 (carrying the appliance's real kernel and initrd), and a copy of the
// appliance's own Gen1 disk. No QEMU is booted here (test/integration/convert-generation-image
// boots the result).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureAppliance, type Appliance } from "../../src/images/appliance/index.js";
import { writeMbrBootCode } from "../../src/images/appliance/disks.js";
import { syslinuxCfg } from "../../src/images/appliance/guest-files.js";
import {
  ConversionRefusedError,
  type ConversionPlan,
  type Gen2BootChain,
  type Inspection,
  convert,
  debianSignedBootChain,
  inspect,
} from "../../src/images/generation/index.js";

const MiB = 1024 * 1024;
const MTOOLS = { ...process.env, MTOOLS_SKIP_CHECK: "1", MTOOLSRC: "/dev/null" };
const SYSLINUX_MBR = "/usr/lib/syslinux/mbr/mbr.bin";

let appliance: Appliance;
let chain: Gen2BootChain;
let work: string;
let kernel: string;
let initrd: string;

before(
  async () => {
    appliance = await ensureAppliance({ log: (l) => console.log(`# appliance: ${l}`) });
    work = await mkdtemp(join(tmpdir(), "vmhost-convert-test-"));
    chain = await debianSignedBootChain(work);
    kernel = join(appliance.dir, appliance.manifest.vmlinuz);
    initrd = join(appliance.dir, appliance.manifest.initrd);
  },
  { timeout: 20 * 60_000 },
);

after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { env: MTOOLS, ...(input !== undefined ? { input } : {}) }).toString();
}

async function sha256(path: string): Promise<string> {
  return createHash("sha256").update(await readFile(path)).digest("hex");
}

interface PartSpec {
  sizeMiB?: number;
  type: string;
  bootable?: boolean;
  /** "syslinux": FAT16 with syslinux.cfg + the appliance's kernel and initrd, SYSLINUX installed. */
  content?: "syslinux" | "ext4";
  /** Files for an ext4 partition: path -> source file or text. */
  files?: Record<string, { from: string } | { text: string }>;
  /** The syslinux.cfg APPEND line. */
  cmdline?: string;
  /** The kernel copied in (default: the appliance's signed one). */
  kernel?: string;
}

/**
 * A disk image with the given MBR partitions, consecutive from 1 MiB (sizeMiB undefined: to
 * the end of the disk). SYSLINUX's MBR code is written unless `mbrCode` is given.
 */
async function makeDisk(name: string, sizeMiB: number, parts: PartSpec[], opts: { mbrCode?: Buffer } = {}): Promise<string> {
  const img = join(work, name);
  const fh = await open(img, "wx");
  await fh.truncate(sizeMiB * MiB);
  await fh.close();
  let start = 2048;
  const lines = ["label: dos"];
  const starts: number[] = [];
  for (const p of parts) {
    if (p.type === "5") {
      lines.push(`start=${start}, type=5`);
      starts.push(start);
      start += 2048; // logical partitions start one EBR track further
      continue;
    }
    const size = p.sizeMiB === undefined ? "" : `, size=${p.sizeMiB * 2048}`;
    lines.push(`start=${start}${size}, type=${p.type}${p.bootable ? ", bootable" : ""}`);
    starts.push(start);
    start += (p.sizeMiB ?? 0) * 2048 + (p.type === "83" && parts.some((q) => q.type === "5") ? 2048 : 0);
  }
  sh("sfdisk", ["-q", img], lines.join("\n") + "\n");
  const table = JSON.parse(sh("sfdisk", ["--json", img])) as { partitiontable: { partitions: { start: number; size: number }[] } };
  for (const [i, p] of parts.entries()) {
    const t = table.partitiontable.partitions.find((x) => x.start === starts[i]) ?? table.partitiontable.partitions[i]!;
    const off = t.start * 512;
    if (p.content === "syslinux") {
      sh("mformat", ["-i", `${img}@@${off}`, "-T", String(t.size), "-h", "64", "-s", "32", "-H", String(t.start), "-v", "BOOT", "::"]);
      const cfg = join(work, `${name}.syslinux.cfg`);
      await writeFile(cfg, syslinuxCfg(p.cmdline ?? appliance.manifest.cmdline));
      sh("mcopy", ["-i", `${img}@@${off}`, cfg, "::/syslinux.cfg"]);
      sh("mcopy", ["-i", `${img}@@${off}`, p.kernel ?? kernel, "::/vmlinuz"]);
      sh("mcopy", ["-i", `${img}@@${off}`, initrd, "::/initrd.img"]);
      sh("syslinux", ["--install", "--offset", String(off), img]);
    } else if (p.content === "ext4") {
      const root = join(work, `${name}.p${i + 1}`);
      await mkdir(root, { recursive: true });
      for (const [path, src] of Object.entries(p.files ?? {})) {
        const dst = join(root, path);
        await mkdir(join(dst, ".."), { recursive: true });
        if ("from" in src) await copyFile(src.from, dst);
        else await writeFile(dst, src.text);
      }
      sh("mkfs.ext4", ["-q", "-F", "-E", `offset=${off}`, "-d", root, img, `${(t.size * 512) / 1024}k`]);
    }
  }
  if (opts.mbrCode) {
    const h = await open(img, "r+");
    await h.write(opts.mbrCode, 0, Math.min(440, opts.mbrCode.length), 0);
    await h.close();
  } else await writeMbrBootCode(img, SYSLINUX_MBR);
  return img;
}

function plan(r: Inspection): ConversionPlan {
  if (!r.convertible) assert.fail(`expected a plan, got refusals:\n${r.refusals.map((x) => `${x.code}: ${x.reason}`).join("\n")}`);
  return r.plan;
}

/** The plan without the GUIDs chosen at random per call. */
function comparable(p: ConversionPlan): unknown {
  const { gpt, ...rest } = p;
  void gpt;
  return JSON.parse(JSON.stringify(rest).replace(/[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}/g, "GUID"));
}

describe("inspect: which MBR disks can be converted", () => {
  test("three primary partitions with SYSLINUX on FAT16: re-purposes the FAT partition, no growth needed", async () => {
    const img = await makeDisk("three.raw", 96, [
      { sizeMiB: 40, type: "6", bootable: true, content: "syslinux" },
      { sizeMiB: 16, type: "83", content: "ext4" },
      { sizeMiB: 8, type: "82" },
    ]);
    const before = await sha256(img);
    const p = plan(await inspect(img, "raw", { bootChain: chain }));
    assert.equal(await sha256(img), before, "inspect reads only");
    assert.equal(p.table.label, "dos");
    assert.deepEqual(p.table.partitions.map((x) => [x.number, x.type, x.fs?.type]), [[1, "6", "vfat"], [2, "83", "ext4"], [3, "82", undefined]], "partition 3 is left unformatted");
    assert.equal(p.resize, undefined, "32 MiB free behind partition 3");
    assert.equal(p.esp.action, "repurpose");
    assert.equal(p.esp.partition, 1);
    assert.equal(p.loader.kind, "debian-shim");
    if (p.loader.kind !== "debian-shim") return;
    assert.equal(p.loader.boot.loader, "syslinux");
    assert.deepEqual(p.loader.boot.config, { partition: 1, path: "/syslinux.cfg" });
    assert.equal(p.loader.boot.kernel.path, "/vmlinuz");
    assert.deepEqual(p.loader.boot.initrd.map((i) => i.path), ["/initrd.img"]);
    assert.equal(p.loader.boot.cmdline, appliance.manifest.cmdline);
    assert.match(p.loader.grubCfg, /^linux \/vmlinuz console=ttyS0,115200 quiet$/m);
    assert.deepEqual(p.secureBoot.enabled, true);
    assert.equal(p.secureBoot.template, "MicrosoftUEFICertificateAuthority");
    assert.deepEqual(Object.keys(p.gpt!.partitionGuids), ["1", "2", "3"]);
  });

  test("an extended partition is refused, naming it, its logical partitions and what to do", async () => {
    const img = await makeDisk("extended.raw", 96, [
      { sizeMiB: 40, type: "6", bootable: true, content: "syslinux" },
      { type: "5" },
      { sizeMiB: 8, type: "83" },
      { sizeMiB: 8, type: "83" },
    ]);
    const r = await inspect(img, "raw", { bootChain: chain });
    assert.equal(r.convertible, false);
    if (r.convertible) return;
    const ext = r.refusals.find((x) => x.code === "extended-partition");
    assert.ok(ext, JSON.stringify(r.refusals));
    assert.match(ext.reason, /partition 2 is an extended partition holding logical partitions 5, 6/);
    assert.match(ext.fix, /primary partitions/);
    await assert.rejects(convert(img, "raw", join(work, "extended.qcow2"), { bootChain: chain }), (e: unknown) => {
      assert.ok(e instanceof ConversionRefusedError);
      assert.equal(e.refusals[0]?.code, "extended-partition");
      assert.match(e.message, /What to do: move the data of the logical partitions/);
      return true;
    });
    assert.deepEqual((await readdir(work)).filter((f) => f.startsWith(".extended.qcow2") || f === "extended.qcow2"), [], "a refused conversion leaves nothing behind");
  });

  test("four primary partitions are refused (MBR2GPT's limit of three)", async () => {
    const img = await makeDisk("four.raw", 96, [
      { sizeMiB: 40, type: "6", bootable: true, content: "syslinux" },
      { sizeMiB: 8, type: "83" },
      { sizeMiB: 8, type: "83" },
      { sizeMiB: 8, type: "83" },
    ]);
    const r = await inspect(img, "raw", { bootChain: chain });
    assert.equal(r.convertible, false);
    if (r.convertible) return;
    assert.deepEqual(r.refusals.map((x) => x.code), ["too-many-primary-partitions"]);
    assert.match(r.refusals[0]!.reason, /4 primary partitions; vmhost converts disks with at most 3/);
  });

  test("a partition that reaches the last sector: the plan grows the copy for the backup GPT", async () => {
    const img = await makeDisk("full.raw", 64, [{ type: "6", bootable: true, content: "syslinux" }]);
    const p = plan(await inspect(img, "raw", { bootChain: chain }));
    assert.deepEqual(p.resize && { from: p.resize.fromBytes, to: p.resize.toBytes }, { from: 64 * MiB, to: 65 * MiB });
    assert.match(p.resize!.why, /backup GPT needs 33 sectors/);
    assert.equal(p.esp.action, "repurpose");
  });

  test("an unsigned kernel: Secure Boot starts off, with the reason and how to turn it on", async () => {
    // The appliance's kernel with its certificate table entry (PE data directory 4) zeroed.
    const k = Buffer.from(await readFile(kernel));
    const pe = k.readUInt32LE(0x3c);
    const dir = pe + 24 + (k.readUInt16LE(pe + 24) === 0x20b ? 112 : 96) + 4 * 8;
    k.fill(0, dir, dir + 8);
    const unsigned = join(work, "vmlinuz-unsigned");
    await writeFile(unsigned, k);
    const img = await makeDisk("unsigned.raw", 64, [{ sizeMiB: 40, type: "6", bootable: true, content: "syslinux", kernel: unsigned }]);
    const p = plan(await inspect(img, "raw", { bootChain: chain }));
    assert.equal(p.secureBoot.enabled, false);
    assert.equal(p.secureBoot.template, "MicrosoftUEFICertificateAuthority");
    assert.match(p.secureBoot.why, /the kernel \/vmlinuz is not signed; Debian's shim starts only kernels Debian Secure Boot CA signed/);
    assert.match(p.secureBoot.why, /vmhost firmware set NAME --secure-boot on/);
  });

  test("a FAT partition too full for shim and GRUB: a new FAT32 ESP behind it, the disk grown for it", async () => {
    const img = await makeDisk("tight.raw", 16, [{ type: "6", bootable: true, content: "syslinux" }]);
    const p = plan(await inspect(img, "raw", { bootChain: chain }));
    assert.deepEqual(p.esp, { action: "create", partition: 2, startLba: 16 * 2048, sizeLba: 100 * 2048 });
    assert.equal(p.resize?.toBytes, (16 + 100 + 1) * MiB);
    assert.ok(p.warnings.some((w) => /less than the .* the boot chain needs/.test(w)), p.warnings.join("\n"));
    if (p.loader.kind !== "debian-shim") return assert.fail("expected the Debian shim loader");
    const uuid = p.table.partitions[0]!.fs!.uuid!.toLowerCase();
    assert.match(p.loader.grubCfg, new RegExp(`^search --no-floppy --fs-uuid --set=root ${uuid}$`, "m"), "the kernel is on partition 1, not on the ESP");
  });

  test("GRUB (boot.img in the MBR) with /boot on ext4 and root=PARTUUID: the entry, a new ESP and the PARTUUID rewritten", async () => {
    // GRUB's boot.img is not installed here; its messages (boot.S) are what identifies it.
    const mbrCode = Buffer.alloc(440);
    Buffer.from("GRUB \0Geom\0Hard Disk\0Read\0 Error\r\n\0", "latin1").copy(mbrCode, 0x180);
    const grubCfg = [
      "set default=0",
      "menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-x' {",
      "  insmod part_msdos",
      "  insmod ext2",
      "  set root='hd0,msdos1'",
      "  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1 BOOTUUID",
      "  linux /vmlinuz-6.1 root=PARTUUID=SIG-02 ro console=ttyS0,115200",
      "  initrd /initrd.img-6.1",
      "}",
      "",
    ].join("\n");
    const img = await makeDisk(
      "grub.raw",
      96,
      [
        { sizeMiB: 40, type: "83", bootable: true, content: "ext4", files: { "grub/grub.cfg": { text: grubCfg }, "vmlinuz-6.1": { from: kernel }, "initrd.img-6.1": { from: initrd } } },
        { sizeMiB: 20, type: "83", content: "ext4", files: { "etc/fstab": { text: "# empty\n" } } },
      ],
      { mbrCode },
    );
    // The config must name this disk's real signature and /boot's real UUID: rewrite them in place.
    const sig = (JSON.parse(sh("sfdisk", ["--json", img])) as { partitiontable: { id: string } }).partitiontable.id.replace(/^0x/, "");
    const bootUuid = sh("blkid", ["-p", "-O", String(MiB), "-S", String(40 * MiB), "-o", "value", "-s", "UUID", img]).trim();
    const fixed = grubCfg.replace("BOOTUUID", bootUuid).replace("SIG-02", `${sig}-02`);
    await writeFile(join(work, "grub.cfg.fixed"), fixed);
    sh("debugfs", ["-w", "-R", `rm /grub/grub.cfg`, `${img}?offset=${MiB}`]);
    sh("debugfs", ["-w", "-R", `write ${join(work, "grub.cfg.fixed")} /grub/grub.cfg`, `${img}?offset=${MiB}`]);

    const p = plan(await inspect(img, "raw", { bootChain: chain }));
    if (p.loader.kind !== "debian-shim") return assert.fail("expected the Debian shim loader");
    const b = p.loader.boot;
    assert.equal(b.loader, "grub");
    assert.deepEqual(b.config, { partition: 1, path: "/grub/grub.cfg" });
    assert.deepEqual([b.kernel.partition, b.kernel.path, b.kernelFs.type], [1, "/vmlinuz-6.1", "ext4"]);
    assert.equal(p.esp.action, "create");
    assert.equal(p.esp.partition, 3);
    const newGuid = p.gpt!.partitionGuids["2"]!.toLowerCase();
    assert.equal(b.newCmdline, `root=PARTUUID=${newGuid} ro console=ttyS0,115200`);
    assert.ok(p.warnings.some((w) => w.includes(`PARTUUID=${sig}-NN`) && w.includes("/etc/fstab")), p.warnings.join("\n"));
    assert.match(p.loader.grubCfg, new RegExp(`^search --no-floppy --fs-uuid --set=root ${bootUuid}$`, "m"));

    const out = join(work, "grub-gen2.raw");
    const before = await sha256(img);
    const r = await convert(img, "raw", out, { dstFormat: "raw", bootChain: chain });
    assert.equal(await sha256(img), before);
    const espOff = r.plan.esp.action === "create" ? r.plan.esp.startLba * 512 : assert.fail("create");
    const cfgOnEsp = sh("mtype", ["-i", `${out}@@${espOff}`, "::/EFI/BOOT/grub.cfg"]);
    assert.equal(cfgOnEsp, r.plan.loader.kind === "debian-shim" ? r.plan.loader.grubCfg : "");
    const guid2 = r.plan.gpt!.partitionGuids["2"]!;
    assert.match(sh("sgdisk", ["-i", "2", out]), new RegExp(`Partition unique GUID: ${guid2}`));
    assert.match(cfgOnEsp, new RegExp(`root=PARTUUID=${guid2.toLowerCase()} `));
    assert.match(sh("sgdisk", ["-i", "3", out]), /EFI system partition/i);
    assert.match(sh("blkid", ["-p", "-O", String(espOff), "-o", "value", "-s", "VERSION", out]), /FAT32/);
  });
});

describe("inspect: disks that are GPT already", () => {
  test("the appliance's Gen2 disk: its ESP's loader is kept, and shim's signer picks the template", async () => {
    const before = await sha256(appliance.gen2Disk);
    const p = plan(await inspect(appliance.gen2Disk, "raw", { bootChain: chain }));
    assert.equal(await sha256(appliance.gen2Disk), before);
    assert.deepEqual(p.esp, { action: "existing", partition: 1 });
    assert.deepEqual(p.loader, { kind: "existing", path: "\\EFI\\BOOT\\BOOTX64.EFI", signer: "Microsoft Windows UEFI Driver Publisher" });
    assert.deepEqual([p.secureBoot.enabled, p.secureBoot.template], [true, "MicrosoftUEFICertificateAuthority"]);
    assert.equal(p.gpt, undefined);
  });

  test("a GPT disk without an EFI System Partition is refused with what to do", async () => {
    const img = join(work, "gpt-linux.raw");
    const fh = await open(img, "wx");
    await fh.truncate(32 * MiB);
    await fh.close();
    sh("sgdisk", ["-n", "1:2048:+16M", "-t", "1:8300", img]);
    const r = await inspect(img, "raw", { bootChain: chain });
    assert.equal(r.convertible, false);
    if (r.convertible) return;
    assert.deepEqual(r.refusals.map((x) => x.code), ["gpt-without-uefi-loader"]);
    assert.match(r.refusals[0]!.fix, /grub-install --target=x86_64-efi --removable/);
  });
});

describe("convert: a copy of the appliance's Gen1 disk", () => {
  test("yields a GPT disk whose ESP holds shim, GRUB and grub.cfg; the source's bytes are unchanged; a dry run writes nothing", async () => {
    const src = join(work, "appliance-gen1.raw");
    await copyFile(appliance.gen1Disk, src);
    const before = await sha256(src);
    const dst = join(work, "appliance-gen2.qcow2");

    const dry = await convert(src, "raw", dst, { dryRun: true, bootChain: chain });
    assert.equal(dry.output, undefined);
    assert.deepEqual((await readdir(work)).filter((f) => f.includes("appliance-gen2")), [], "a dry run writes nothing");

    const r = await convert(src, "raw", dst, { dstFormat: "qcow2", bootChain: chain });
    assert.equal(await sha256(src), before, "the source is unchanged");
    assert.deepEqual(comparable(r.plan), comparable(dry.plan), "the dry run's plan is the plan carried out");
    assert.deepEqual(r.output, { path: dst, format: "qcow2", virtualSize: 65 * MiB });
    assert.equal((JSON.parse(sh("qemu-img", ["info", "--output=json", dst])) as { format: string }).format, "qcow2");
    assert.deepEqual((await readdir(work)).filter((f) => f.startsWith(".appliance-gen2")), [], "no temporary files are left");

    const raw = join(work, "appliance-gen2-check.raw");
    sh("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", dst, raw]);
    const p = sh("sgdisk", ["-p", raw]);
    assert.match(p, /^\s+1\s+2048\s+131071\s+63\.0 MiB\s+EF00\s+EFI System Partition$/m);
    assert.match(sh("sgdisk", ["-v", raw]), /No problems found/);
    assert.match(p, new RegExp(`Disk identifier \\(GUID\\): ${r.plan.gpt!.diskGuid}`));
    const esp = sh("mdir", ["-i", `${raw}@@${MiB}`, "-a", "-b", "::/EFI/BOOT"]).toLowerCase();
    for (const f of ["bootx64.efi", "grubx64.efi", "mmx64.efi", "grub.cfg"]) assert.ok(esp.includes(`::/efi/boot/${f}`), `\\EFI\\BOOT\\${f}`);
    const shimOnEsp = execFileSync("mtype", ["-i", `${raw}@@${MiB}`, "::/EFI/BOOT/BOOTX64.EFI"], { env: MTOOLS, maxBuffer: 64 * MiB });
    assert.ok(shimOnEsp.equals(await readFile(chain.shim)), "\\EFI\\BOOT\\BOOTX64.EFI is Debian's signed shim");
    const cfg = sh("mtype", ["-i", `${raw}@@${MiB}`, "::/EFI/BOOT/grub.cfg"]);
    assert.match(cfg, /^linux \/vmlinuz console=ttyS0,115200 quiet$/m);
    assert.match(cfg, /^initrd \/initrd\.img$/m);
    const root = sh("mdir", ["-i", `${raw}@@${MiB}`, "-a", "-b", "::/"]).toLowerCase();
    for (const f of ["vmlinuz", "initrd.img", "syslinux.cfg", "ldlinux.sys"]) assert.ok(root.includes(`::/${f}`), `the guest's ${f} is kept`);

    await assert.rejects(convert(src, "raw", dst, { bootChain: chain }), /already exists; refusing to overwrite it/);
  });

  test("a qcow2 source is inspected through a raw copy and gives the same plan as its raw original", async () => {
    const raw = join(work, "appliance-src.raw");
    await copyFile(appliance.gen1Disk, raw);
    const q = join(work, "appliance-src.qcow2");
    sh("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, q]);
    const before = await sha256(q);
    const a = plan(await inspect(raw, "raw", { bootChain: chain }));
    const b = plan(await inspect(q, "qcow2", { bootChain: chain, workDir: work }));
    assert.equal(await sha256(q), before);
    const same = (x: ConversionPlan) => comparable({ ...x, source: a.source, steps: x.steps.slice(1) });
    assert.deepEqual(same(b), same(a));
    assert.equal(b.source.format, "qcow2");
    assert.deepEqual((await readdir(work)).filter((f) => f.startsWith("vmhost-convert-")), [], "the raw copy is removed");
  });
});
