import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { TestHost, sleep } from "../helpers/harness.js";

/**
 * Boot diagnostics on real boots through the real CLI and service: UEFI with no boot disk
 * (with its network adapter, and without), SeaBIOS with no disk, and a boot that goes silent.
 * One VM at a time; each is turned off before the next starts.
 */
let host: TestHost;
const STALL_SECONDS = 15;

interface ShownDiagnosis {
  id: string;
  kind: string;
  title: string;
  explanation: string;
  fix: string;
  at: string;
  evidence: string[];
}

before(async () => {
  host = await TestHost.create();
  // vmhostd is started by the first CLI call and takes this from its environment.
  host.env["VMHOST_STALL_SECONDS"] = String(STALL_SECONDS);
});
after(async () => {
  await host.cleanup();
});

async function diagnosis(name: string): Promise<ShownDiagnosis | null> {
  return (await host.json<{ diagnosis: ShownDiagnosis | null }>(["show", name])).diagnosis;
}

/** Starts the VM and waits for a diagnosis with this id; returns it and the seconds since the start command. */
async function startUntilDiagnosed(name: string, id: string, timeoutMs: number): Promise<{ d: ShownDiagnosis; seconds: number }> {
  const t0 = Date.now();
  await host.ok(["start", name]);
  let last: ShownDiagnosis | null = null;
  while (Date.now() - t0 < timeoutMs) {
    last = await diagnosis(name);
    if (last?.id === id) return { d: last, seconds: (Date.now() - t0) / 1000 };
    await sleep(500);
  }
  throw new Error(`${name}: no "${id}" diagnosis within ${timeoutMs} ms (last: ${JSON.stringify(last)}); console:\n${(await host.consoleText(name)).slice(-1500)}`);
}

test("a Gen2 VM with no boot disk (as created: one network adapter) names the UEFI failure within 60 s of start", { timeout: 180_000 }, async () => {
  await host.ok(["new", "nodisk", "--generation", "2"]);
  const { d, seconds } = await startUntilDiagnosed("nodisk", "uefi-network-boot-no-disk", 120_000);
  console.log(`# Gen2 with its adapter, no disk: "${d.title}" ${seconds.toFixed(1)} s after start`);
  assert.ok(seconds < 60, `diagnosed after ${seconds} s`);
  assert.match(d.title, /No boot disk: UEFI is trying network boot/);
  assert.match(d.fix, /vmhost disk add nodisk --path DISK/);
  assert.ok(d.evidence.some((l) => /Start PXE over IPv4/.test(l)), d.evidence.join("\n"));
  const events = await host.json<{ type: string; message: string }[]>(["events", "nodisk"]);
  assert.ok(events.some((e) => e.type === "diagnosis" && e.message.includes("UEFI is trying network boot")));
  await host.ok(["turn-off", "nodisk"]);
  // Off, the diagnosis is still shown.
  assert.equal((await diagnosis("nodisk"))?.id, "uefi-network-boot-no-disk");
});

test("a Gen2 VM with no disk and no adapter: UEFI falls back to its shell within 60 s; show has it after Off; the next start clears it", { timeout: 180_000 }, async () => {
  await host.ok(["new", "bare", "--generation", "2"]);
  await host.ok(["nic", "remove", "bare", "Network Adapter"]);
  const { d, seconds } = await startUntilDiagnosed("bare", "uefi-shell-fallback", 120_000);
  console.log(`# Gen2 without disk or adapter: "${d.title}" ${seconds.toFixed(1)} s after start`);
  assert.ok(seconds < 60, `diagnosed after ${seconds} s`);
  assert.match(d.title, /No operating system was loaded: UEFI fell back to its built-in shell/);
  assert.match(d.fix, /no hard disk and no DVD/);
  assert.ok(d.evidence.some((l) => l.startsWith("UEFI Interactive Shell")));
  const human = await host.ok(["show", "bare"]);
  assert.match(human, /Diagnosis: +No operating system was loaded: UEFI fell back to its built-in shell \(uefi-shell-fallback, /);
  assert.match(human, /Fix: .*vmhost dvd set bare ISO/);
  await host.ok(["turn-off", "bare"]);
  const off = await host.json<{ state: string; diagnosis: ShownDiagnosis | null }>(["show", "bare"]);
  assert.equal(off.state, "Off");
  assert.equal(off.diagnosis?.id, "uefi-shell-fallback");
  // The next start clears it at once (OVMF prints nothing for its first seconds) and then diagnoses again.
  await host.ok(["start", "bare"]);
  let cleared = false;
  for (const t0 = Date.now(); !cleared && Date.now() - t0 < 2500; await sleep(100)) cleared = (await diagnosis("bare")) === null;
  assert.ok(cleared, "the start cleared the last run's diagnosis");
  await host.ok(["turn-off", "bare"]);
});

test("a Gen1 VM with no disk: SeaBIOS's No bootable device, on the console and diagnosed", { timeout: 180_000 }, async () => {
  await host.ok(["new", "g1", "--generation", "1"]);
  const { d, seconds } = await startUntilDiagnosed("g1", "bios-no-bootable-device", 120_000);
  assert.match(d.title, /BIOS found no bootable device/);
  assert.ok(d.evidence.includes("No bootable device."), d.evidence.join("\n"));
  assert.match(d.fix, /no hard disk and no DVD/);
  assert.match(await host.consoleText("g1"), /SeaBIOS \(version/);
  console.log(`# SeaBIOS no bootable device diagnosed ${seconds.toFixed(1)} s after start`);
  await host.ok(["turn-off", "g1"]);
});

test("Secure Boot with the MicrosoftWindows template refuses the appliance's shim: the diagnosis names the template, and its advice works", { timeout: 300_000 }, async () => {
  await host.ok(["new", "sb", "--generation", "2", "--appliance"]);
  await host.ok(["nic", "remove", "sb", "Network Adapter"]);
  await host.ok(["firmware", "set", "sb", "--secure-boot", "on", "--secure-boot-template", "MicrosoftWindows"]);
  const { d, seconds } = await startUntilDiagnosed("sb", "secure-boot-refused", 120_000);
  console.log(`# Secure Boot refusal: "${d.title}" ${seconds.toFixed(1)} s after start`);
  assert.ok(seconds < 60, `diagnosed after ${seconds} s`);
  assert.match(d.title, /Secure Boot refused to start Boot[0-9A-F]{4} "UEFI QEMU QEMU HARDDISK" \(Access Denied\)/);
  assert.match(d.fix, /Secure Boot is on with the MicrosoftWindows template.*needs the MicrosoftUEFICertificateAuthority template/);
  await host.ok(["turn-off", "sb"]);
  // Following the advice: the same disk boots under the UEFI CA template, and no diagnosis is left.
  await host.ok(["firmware", "set", "sb", "--secure-boot-template", "MicrosoftUEFICertificateAuthority"]);
  await host.ok(["start", "sb"]);
  await host.waitConsole("sb", "vmhost-appliance: secure boot enabled", 180_000);
  await host.waitConsole("sb", "vmhost-appliance: ready", 60_000);
  await sleep(1000);
  assert.equal(await diagnosis("sb"), null);
  await host.ok(["turn-off", "sb"]);
});

/**
 * A boot sector that prints seed 000's last console lines (OmniOS on a one-vCPU Gen1 VM) on
 * COM1 and halts: a real BIOS boot that goes silent after "Configuring devices.".
 */
function hangingBootSector(text: string): Buffer {
  const code = Buffer.from([
    0xfa, //             cli
    0x31, 0xc0, //       xor ax, ax
    0x8e, 0xd8, //       mov ds, ax
    0xbe, 0x16, 0x7c, // mov si, 0x7c16 (the text)
    0xba, 0xf8, 0x03, // mov dx, 0x3f8 (COM1)
    0xac, //             next: lodsb
    0x84, 0xc0, //       test al, al
    0x74, 0x03, //       jz halt
    0xee, //             out dx, al
    0xeb, 0xf8, //       jmp next
    0xf4, //             halt: hlt
    0xeb, 0xfd, //       jmp halt
  ]);
  const sector = Buffer.alloc(512);
  code.copy(sector, 0);
  const msg = Buffer.from(text + "\0", "latin1");
  if (0x16 + msg.length > 510) throw new Error("text too long for a boot sector");
  msg.copy(sector, 0x16);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

test("a boot that prints nothing new shows 'boot stalled after: <last line>', with advice from the VM's vCPU count", { timeout: 240_000 }, async () => {
  const disk = join(host.home, "omnios-hang.img");
  const lines = [
    "SunOS Release 5.11 Version omnios-r151030-f1189fc02c 64-bit",
    "Copyright (c) 1983, 2010, Oracle and/or its affiliates. All rights reserved.",
    "Copyright (c) 2017-2019 OmniOS Community Edition (OmniOSce) Association.",
    "Configuring devices.",
  ];
  const image = Buffer.alloc(1024 * 1024);
  hangingBootSector("\r\n" + lines.join("\r\n") + "\r\n").copy(image, 0);
  await writeFile(disk, image);
  await host.ok(["new", "omnios", "--generation", "1", "--disk", disk]);
  const { d, seconds } = await startUntilDiagnosed("omnios", "illumos-configuring-devices-stall", 120_000);
  assert.equal(d.kind, "stall");
  assert.equal(d.title, "boot stalled after: Configuring devices.");
  assert.match(d.fix, /vmhost set omnios --cpus 2/);
  assert.ok(seconds >= STALL_SECONDS, `not before ${STALL_SECONDS} s of silence (${seconds} s)`);
  await host.ok(["turn-off", "omnios"]);

  // With two vCPUs the advice follows the VM's settings.
  await host.ok(["set", "omnios", "--cpus", "2"]);
  const second = await startUntilDiagnosed("omnios", "illumos-configuring-devices-stall", 120_000);
  assert.match(second.d.fix, /already has 2 virtual processors/);
  await host.ok(["turn-off", "omnios"]);
  const events = await host.json<{ type: string; message: string }[]>(["events", "omnios"]);
  assert.equal(events.filter((e) => e.type === "diagnosis").length, 2);
});
