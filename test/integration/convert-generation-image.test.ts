// Converts a copy of the appliance's Gen1 (MBR + SYSLINUX) disk into a Gen2 disk and boots it
// as vmhost builds a Gen2 machine (src/engine/qemu/argv.ts): q35 without PIT and SATA, SMM,
// OVMF's Secure Boot build with Microsoft's keys enrolled (Secure Boot on), the disk on
// virtio-SCSI, the console in a file. One QEMU at a time (TCG; the host has 2 cores).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdtemp, readFile, rm } from "node:fs/promises";
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

test("the converted appliance disk boots under OVMF with Secure Boot on (MS keys) from virtio-SCSI", { timeout: 20 * 60_000 }, async (t) => {
  const source = join(work, "gen1.raw");
  await copyFile(appliance.gen1Disk, source);
  const before = await sha256(source);
  const disk = join(work, "gen2.qcow2");
  const result = await convert(source, "raw", disk, { dstFormat: "qcow2" });
  assert.equal(await sha256(source), before, "the source is unchanged");
  assert.equal(result.plan.secureBoot.enabled, true);
  assert.equal(result.plan.secureBoot.template, "MicrosoftUEFICertificateAuthority");

  const vars = join(work, "vars.fd");
  await copyFile(join(OVMF, "OVMF_VARS_4M.ms.fd"), vars);
  const serial = join(work, "serial.log");
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
    "-blockdev", JSON.stringify({ driver: "qcow2", "node-name": "disk0", file: { driver: "file", filename: disk } }),
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
    assert.match(text, /vmhost convert-generation: GRUB is loading \/vmlinuz/, "the converted grub.cfg ran");
    assert.match(text, /^vmhost-appliance: booted via UEFI$/m);
    assert.match(text, /^vmhost-appliance: secure boot enabled$/m);
  } finally {
    if (exitCode === undefined) {
      qemu.kill("SIGTERM");
      const timer = setTimeout(() => qemu.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
  }
  assert.equal(await sha256(source), before, "the source is still unchanged after the boot");
});
