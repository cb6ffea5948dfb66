// Converts a copy of the appliance's Gen1 (MBR + SYSLINUX) disk into a Gen2 disk and boots it
// as vmhost builds a Gen2 machine (src/engine/qemu/argv.ts): q35 without PIT and SATA, SMM,
// OVMF's Secure Boot build with Microsoft's keys enrolled (Secure Boot on), the disk on
// virtio-SCSI, the console in a file. One QEMU at a time (TCG; the host has 2 cores).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureAppliance, type Appliance } from "../../src/images/appliance/index.js";
import { convert } from "../../src/images/generation/index.js";
import { READY } from "../helpers/harness.js";

const OVMF = "/usr/share/OVMF";
const BOOT_DEADLINE_MS = 150_000;

let appliance: Appliance;
let work: string;

before(
  async () => {
    appliance = await ensureAppliance({ log: (l) => console.log(`# appliance: ${l}`) });
    work = await mkdtemp(join(tmpdir(), "vmhost-convert-boot-"));
  },
  { timeout: 20 * 60_000 },
);

after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function sha256(path: string): Promise<string> {
  return createHash("sha256").update(await readFile(path)).digest("hex");
}

/** Reads the serial log until `re` matches, QEMU exits, or the deadline passes. */
async function waitForConsole(log: string, re: RegExp, exited: () => number | null | undefined, deadlineMs: number): Promise<string> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const text = (await readFile(log, "latin1").catch(() => "")).replace(/\r/g, "");
    if (re.test(text)) return text;
    const code = exited();
    if (code !== undefined) throw new Error(`QEMU exited (${code}) before ${re} appeared; console:\n${text.slice(-3000)}`);
    if (Date.now() > end) throw new Error(`no ${re} within ${deadlineMs} ms; console:\n${text.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Boots `disk` as vmhost boots a Gen2 VM with Secure Boot on (MicrosoftUEFICertificateAuthority
 * keys: Debian's OVMF_VARS_4M.ms.fd) and returns the console once the appliance is ready.
 */
async function bootGen2(disk: string, format: string, t: { diagnostic(m: string): void }): Promise<string> {
  const vars = join(work, `vars-${Date.now()}.fd`);
  await copyFile(join(OVMF, "OVMF_VARS_4M.ms.fd"), vars);
  const serial = join(work, `serial-${Date.now()}.log`);
  const args = [
    "-no-user-config", "-nodefaults", "-display", "none",
    "-blockdev", JSON.stringify({ driver: "file", "node-name": "fw-code-file", filename: join(OVMF, "OVMF_CODE_4M.secboot.fd"), "read-only": true }),
    "-blockdev", JSON.stringify({ driver: "raw", "node-name": "fw-code", file: "fw-code-file", "read-only": true }),
    "-blockdev", JSON.stringify({ driver: "file", "node-name": "fw-vars-file", filename: vars }),
    "-blockdev", JSON.stringify({ driver: "raw", "node-name": "fw-vars", file: "fw-vars-file" }),
    "-machine", "q35,accel=tcg,pit=off,sata=off,vmport=off,smm=on,pflash0=fw-code,pflash1=fw-vars",
    "-global", "driver=cfi.pflash01,property=secure,value=on",
    "-m", "512M", "-smp", "1",
    "-serial", `file:${serial}`,
    "-device", "virtio-scsi-pci,id=scsi0",
    "-blockdev", JSON.stringify({ driver: format, "node-name": "disk0", file: { driver: "file", filename: disk } }),
    "-device", "scsi-hd,drive=disk0,bus=scsi0.0,scsi-id=0,lun=0",
  ];
  const qemu = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  qemu.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
  let exitCode: number | null | undefined;
  const exited = new Promise<void>((res) => qemu.on("exit", (code) => ((exitCode = code), res())));
  const started = Date.now();
  try {
    const text = await waitForConsole(serial, new RegExp(`^${READY}$`, "m"), () => exitCode, BOOT_DEADLINE_MS).catch((e: Error) => {
      throw new Error(`${e.message}\n--- qemu stderr ---\n${stderr}`);
    });
    t.diagnostic(`ready ${((Date.now() - started) / 1000).toFixed(1)} s after QEMU started`);
    return text;
  } finally {
    if (exitCode === undefined) {
      qemu.kill("SIGTERM");
      const timer = setTimeout(() => qemu.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
  }
}

test("the converted appliance disk boots under OVMF with Secure Boot on (MS keys) from virtio-SCSI", { timeout: 20 * 60_000 }, async (t) => {
  const source = join(work, "gen1.raw");
  await copyFile(appliance.gen1Disk, source);
  const before = await sha256(source);
  const disk = join(work, "gen2.qcow2");
  const result = await convert(source, "raw", disk, { dstFormat: "qcow2" });
  assert.equal(await sha256(source), before, "the source is unchanged");
  assert.equal(result.plan.secureBoot.enabled, true);
  assert.equal(result.plan.secureBoot.template, "MicrosoftUEFICertificateAuthority");

  const text = await bootGen2(disk, "qcow2", t);
  assert.match(text, /vmhost convert-generation: GRUB is loading \/vmlinuz/, "the converted grub.cfg ran");
  assert.match(text, /^vmhost-appliance: booted via UEFI$/m);
  assert.match(text, /^vmhost-appliance: secure boot enabled$/m);
  assert.equal(await sha256(source), before, "the source is still unchanged after the boot");
});

test("a GRUB disk with /boot on ext4 gets a new FAT32 ESP whose grub.cfg finds /boot by UUID; it boots with Secure Boot on", { timeout: 10 * 60_000 }, async (t) => {
  // An MBR whose boot code carries GRUB's boot.img messages (grub-core/boot/i386/pc/boot.S), /boot
  // as ext4 partition 1 (the appliance's signed kernel and initramfs, a Debian-style grub.cfg)
  // and an empty ext4 root as partition 2, addressed by its MBR PARTUUID.
  const img = join(work, "grub-ext4.raw");
  const fh = await open(img, "wx");
  await fh.truncate(96 * 1024 * 1024);
  const code = Buffer.alloc(440);
  Buffer.from("GRUB \0Geom\0Hard Disk\0Read\0 Error\r\n\0", "latin1").copy(code, 0x180);
  await fh.close();
  execFileSync("sfdisk", ["-q", img], { input: "label: dos\nstart=2048, size=81920, type=83, bootable\nstart=83968, size=40960, type=83\n" });
  const sig = (JSON.parse(execFileSync("sfdisk", ["--json", img]).toString()) as { partitiontable: { id: string } }).partitiontable.id.replace(/^0x/, "");
  const boot = join(work, "boot-fs");
  await mkdir(join(boot, "grub"), { recursive: true });
  await copyFile(join(appliance.dir, appliance.manifest.vmlinuz), join(boot, "vmlinuz-appliance"));
  await copyFile(join(appliance.dir, appliance.manifest.initrd), join(boot, "initrd.img-appliance"));
  execFileSync("mkfs.ext4", ["-q", "-F", "-E", "offset=1048576", "-d", boot, img, "40960k"]);
  const bootUuid = execFileSync("blkid", ["-p", "-O", "1048576", "-S", String(40 * 1048576), "-o", "value", "-s", "UUID", img]).toString().trim();
  await writeFile(
    join(boot, "grub.cfg"),
    [
      "set default=0",
      "menuentry 'Debian GNU/Linux' {",
      "  set root='hd0,msdos1'",
      `  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1 ${bootUuid}`,
      `  linux /vmlinuz-appliance root=PARTUUID=${sig}-02 ro ${appliance.manifest.cmdline}`,
      "  initrd /initrd.img-appliance",
      "}",
      "",
    ].join("\n"),
  );
  execFileSync("debugfs", ["-w", "-R", `write ${join(boot, "grub.cfg")} /grub/grub.cfg`, `${img}?offset=1048576`]);
  const rootFs = join(work, "root-fs");
  await mkdir(rootFs);
  execFileSync("mkfs.ext4", ["-q", "-F", "-E", `offset=${83968 * 512}`, "-d", rootFs, img, "20480k"]);
  const h = await open(img, "r+");
  await h.write(code, 0, 440, 0);
  await h.close();

  const before = await sha256(img);
  const disk = join(work, "grub-ext4-gen2.qcow2");
  const r = await convert(img, "raw", disk, { dstFormat: "qcow2" });
  assert.equal(await sha256(img), before, "the source is unchanged");
  assert.equal(r.plan.esp.action, "create");
  assert.equal(r.plan.secureBoot.enabled, true);
  const text = await bootGen2(disk, "qcow2", t);
  assert.match(text, /vmhost convert-generation: GRUB is loading \/vmlinuz-appliance/);
  assert.match(text, /^vmhost-appliance: secure boot enabled$/m);
  const guid = r.plan.gpt!.partitionGuids["2"]!.toLowerCase();
  assert.ok(r.plan.loader.kind === "debian-shim" && r.plan.loader.grubCfg.includes(`root=PARTUUID=${guid} `), "the MBR PARTUUID became the GPT one");
});
