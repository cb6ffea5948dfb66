import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { buildNetbootPayload } from "../../src/images/netboot.js";
import type { FirmwareSetResult, FirmwareView } from "../../src/service/firmware.js";
import { BOOT_TIMEOUT_MS, READY, TestHost, sleep } from "../helpers/harness.js";
import { stripTerminalControls } from "../../src/supervisor/console-log.js";

/**
 * Gen2 boot order on real OVMF, one appliance VM taken through four boots (steps run in order):
 *   1. Secure Boot on with MicrosoftUEFICertificateAuthority (the default for the appliance):
 *      Debian's signed shim, GRUB and kernel boot; firmware get maps a Drive entry to the boot
 *      disk and Network entries to the adapter; efibootmgr in the guest makes a File entry.
 *   2. A disk is hot-added and the disk is made first while the VM runs (both kept pending);
 *      after a cold start the firmware loads the reordered entry, and the File entry is still
 *      there, listed as File.
 *   3. The adapter made first with a network boot payload on the Default Switch (Secure Boot
 *      off: the payload is not signed): the firmware boots it over PXEv4.
 *   4. MicrosoftWindows template with PauseAfterBootFailure: the signed Linux chain is refused
 *      (Access Denied), the VM pauses on it, and resume lets the firmware go on to the next entry.
 */
let host: TestHost;
const VM = "fw";
const STEP_TIMEOUT = BOOT_TIMEOUT_MS + 120_000;

/** Console text without terminal control sequences (OVMF sends some). */
async function consoleFrom(name: string, from: number): Promise<string> {
  return stripTerminalControls((await host.consoleText(name)).slice(from)).replace(/\r/g, "");
}

async function waitFor(name: string, pattern: RegExp, from: number, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await consoleFrom(name, from);
    if (pattern.test(text)) return text;
    if (Date.now() > deadline) throw new Error(`console of ${name} did not show ${String(pattern)}; last output:\n${text.slice(-2000)}`);
    await sleep(250);
  }
}

const firmware = (): Promise<FirmwareView> => host.json<FirmwareView>(["firmware", "get", VM]);
const set = async (...args: string[]): Promise<FirmwareSetResult> => host.json<FirmwareSetResult>(["firmware", "set", VM, ...args]);

before(async () => {
  host = await TestHost.create();
});
after(async () => {
  await host.cleanup();
});

test("an appliance VM boots under Secure Boot (UEFI CA) and its entries map to its devices", { timeout: STEP_TIMEOUT }, async () => {
  await host.ok(["new", VM, "--generation", "2", "--appliance", "--memory", "512M"]);
  const before = await firmware();
  assert.equal(before.secureBoot, "On");
  assert.equal(before.secureBootTemplate, "MicrosoftUEFICertificateAuthority");
  // Entries exist before the first boot, made the way OVMF makes them.
  assert.deepEqual(before.bootOrder!.map((e) => [e.id, e.bootType]), [["Boot0000", "Drive"], ["Boot0001", "Network"], ["Boot0002", "Network"]]);

  await host.ok(["start", VM]);
  const log = await waitFor(VM, new RegExp(READY), 0, BOOT_TIMEOUT_MS);
  assert.match(log, /vmhost-appliance: secure boot enabled/);
  assert.match(log, /BdsDxe: starting Boot0000 "UEFI QEMU QEMU HARDDISK "/);

  const f = await firmware();
  const drive = f.bootOrder!.find((e) => e.bootType === "Drive");
  assert.equal(drive?.id, "Boot0000", "OVMF kept the entry vmhost made");
  assert.deepEqual(drive?.device && [drive.device.type, drive.device.ref], ["HardDiskDrive", "SCSI 0:0"]);
  assert.equal(drive?.firmwarePath, "PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x0)");
  const net = f.bootOrder!.filter((e) => e.bootType === "Network");
  assert.deepEqual(net.map((e) => e.protocol), ["PXEv4", "HTTPv4"], "one protocol per VM: IPv4 by default");
  assert.ok(net.every((e) => e.device?.type === "NetworkAdapter" && e.device.ref === "Network Adapter"));
  assert.ok(f.bootOrder!.some((e) => e.bootType === "Firmware" && e.description === "UiApp"));
  assert.deepEqual([f.nvram?.secureBoot, f.nvram?.setupMode, f.nvram?.db], [true, false, ["Microsoft Corporation UEFI CA 2011"]]);

  // An OS installer's entry: efibootmgr puts it first, as Windows setup does.
  await host.run(VM, "efibootmgr -q -c -d /dev/sda -p 1 -L vmhost-installed -l '\\EFI\\debian\\shimx64.efi' && echo efi-entry-made", /efi-entry-made/);
  const g = await firmware();
  const file = g.bootOrder![0]!;
  assert.equal(file.bootType, "File");
  assert.equal(file.description, "vmhost-installed");
  assert.match(file.firmwarePath, /^HD\(1,GPT,[0-9A-F-]+,0x800,0x[0-9A-F]+\)\/\\EFI\\debian\\shimx64\.efi$/);
  assert.equal(file.device, null);
});

let fileId = "";

test("changes asked for while it runs are pending; after a cold start the reordered entry is the one loaded", { timeout: STEP_TIMEOUT }, async () => {
  fileId = (await firmware()).bootOrder![0]!.id;
  await host.ok(["disk", "add", VM, "--new", "64M"]);
  const r = await set("--first-boot-device", "SCSI 0:0");
  assert.equal(r.pending, true);
  assert.match(r.messages.join("\n"), /pending: VM "fw" is Running/);
  assert.deepEqual(r.view.pending.map((p) => p.op), ["devices", "first-boot-device"]);
  assert.match(r.view.pendingReason ?? "", /applied before the next start/);
  // A name that matches nothing is refused now, not kept.
  const bad = await host.cli(["firmware", "set", VM, "--first-boot-device", "SCSI 3:3"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /no boot entry points at "SCSI 3:3"/);

  await host.ok(["turn-off", VM]);
  const from = (await host.consoleText(VM)).length;
  await host.ok(["start", VM]);
  const log = await waitFor(VM, new RegExp(READY), from, BOOT_TIMEOUT_MS);
  const loads = [...log.matchAll(/BdsDxe: loading (Boot[0-9A-F]{4})/g)].map((m) => m[1]);
  assert.deepEqual(loads, ["Boot0000"], "the disk's entry, moved ahead of the File entry, is what OVMF loads");

  const f = await firmware();
  assert.deepEqual(f.pending, []);
  assert.equal(f.bootOrder![0]!.id, "Boot0000");
  const file = f.bootOrder!.find((e) => e.id === fileId);
  assert.equal(file?.bootType, "File", "the OS's entry survived the reboot and the added disk");
  assert.equal(file?.description, "vmhost-installed");
  const disks = f.bootOrder!.filter((e) => e.bootType === "Drive");
  assert.deepEqual(disks.map((e) => e.device?.ref), ["SCSI 0:0", "SCSI 0:1"]);
  assert.equal(f.bootOrder!.filter((e) => e.inBootOrder).at(-1)?.device?.ref, "SCSI 0:1", "the added disk's entry went to the bottom");
  await host.ok(["turn-off", VM]);
});

test("--first-boot-device on the adapter boots an EFI payload over PXEv4", { timeout: STEP_TIMEOUT }, async () => {
  const payload = await buildNetbootPayload(join(host.home, "payload"), { marker: "fwtest" });
  // --boot-order leaves entries out: they move to the end, and the CLI says so.
  const order = await host.cli(["firmware", "set", VM, "--boot-order", "Network Adapter"]);
  assert.equal(order.code, 0, order.stderr);
  assert.match(order.stdout, /left out and moved to the end/);
  const r = await set("--secure-boot", "off", "--network-boot-dir", payload.dir, "--network-boot-file", "bootx64.efi", "--first-boot-device", "Network Adapter");
  assert.equal(r.pending, false);
  assert.equal(r.view.bootOrder![0]!.protocol, "PXEv4");
  assert.equal(r.view.nvram?.secureBoot, false);
  const pxe = r.view.bootOrder![0]!.id;

  const from = (await host.consoleText(VM)).length;
  await host.ok(["start", VM]);
  const log = await waitFor(VM, /vmhost-netboot: payload fwtest running \(via uefi\)/, from, BOOT_TIMEOUT_MS);
  assert.match(log, />>Start PXE over IPv4/);
  assert.match(log, new RegExp(`BdsDxe: starting ${pxe} "UEFI PXEv4 \\(MAC:[0-9A-F]{12}\\)"`));
  assert.match(log, /vmhost-appliance: secure boot disabled/);
  assert.doesNotMatch(log, /PXE over IPv6/);
  await host.ok(["turn-off", VM]);
});

test("MicrosoftWindows refuses the Linux chain; PauseAfterBootFailure pauses and resume goes on", { timeout: STEP_TIMEOUT }, async () => {
  const r = await set(
    "--secure-boot", "on", "--secure-boot-template", "MicrosoftWindows", "--pause-after-boot-failure", "on", "--first-boot-device", "SCSI 0:0",
  );
  assert.deepEqual(r.view.nvram?.db, ["Microsoft Windows Production PCA 2011"]);
  assert.match(r.view.secureBootInForce ?? "", /^On \(MicrosoftWindows\)/);
  const from = (await host.consoleText(VM)).length;
  await host.ok(["start", VM]);
  await waitFor(VM, /BdsDxe: failed to load Boot0000 "UEFI QEMU QEMU HARDDISK " from [^\n]*: Access Denied/, from, BOOT_TIMEOUT_MS);
  await host.waitState(VM, "Paused", 10_000);
  const f = await firmware();
  assert.deepEqual(
    f.lastBootFailure && [f.lastBootFailure.entry, f.lastBootFailure.reason, f.lastBootFailure.paused],
    ["Boot0000", "Access Denied", true],
  );
  const mark = (await host.consoleText(VM)).length;
  await sleep(3000);
  assert.doesNotMatch(await consoleFrom(VM, mark), /BdsDxe: (loading|failed)/, "nothing more is tried while paused");

  await host.ok(["resume", VM]);
  // The next entry is the adapter's PXEv4 (payload unsigned: refused too, and paused again).
  const next = await waitFor(VM, /BdsDxe: failed to (load|start) Boot0001 [^\n]*: (Access Denied|Security Violation)/, mark, BOOT_TIMEOUT_MS);
  // (">>Start PXE over IPv4" may already be out: the firmware goes on for the few ms the pause takes.)
  assert.match(next, /NBP file downloaded successfully[\s\S]*BdsDxe: loading Boot0001 "UEFI PXEv4/);
  await host.waitState(VM, "Paused", 10_000);
  assert.equal((await firmware()).lastBootFailure?.entry, "Boot0001");
  const events = await host.json<{ type: string; message: string }[]>(["events", VM]);
  assert.ok(events.filter((e) => e.type === "boot-failure").length >= 2);
  await host.ok(["turn-off", VM]);
});

test("generation 1: the BIOS startup order is set and shown; UEFI settings are refused by rule", async () => {
  await host.ok(["new", "g1", "--generation", "1", "--new-disk", "16M:raw"]);
  const r = await host.json<FirmwareSetResult>(["firmware", "set", "g1", "--startup-order", "IDE,CD,LegacyNetworkAdapter,Floppy"]);
  assert.deepEqual(r.view.startupOrder, ["IDE", "CD", "LegacyNetworkAdapter", "Floppy"]);
  assert.deepEqual((await host.json<FirmwareView>(["firmware", "get", "g1"])).startupOrder, ["IDE", "CD", "LegacyNetworkAdapter", "Floppy"]);
  const bad = await host.cli(["firmware", "set", "g1", "--secure-boot", "on"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /rule generation-1-bios/);
});

test("IPv6 as the preferred protocol: each adapter's entries become PXEv6/HTTPv6 in place, and a removed adapter's go", async () => {
  await host.ok(["new", "v6", "--generation", "2", "--new-disk", "16M:raw"]);
  await host.ok(["nic", "add", "v6"]);
  const before = await host.json<FirmwareView>(["firmware", "get", "v6"]);
  assert.equal(before.secureBoot, "Off", "a disk vmhost knows nothing about: Secure Boot is not assumed");
  assert.deepEqual(before.bootOrder!.map((e) => e.protocol ?? e.bootType), ["Drive", "PXEv4", "HTTPv4", "PXEv4", "HTTPv4"]);
  const r = await host.json<FirmwareSetResult>(["firmware", "set", "v6", "--preferred-network-boot-protocol", "ipv6"]);
  assert.match(r.messages.join("\n"), /stateful DHCPv6/);
  assert.deepEqual(
    r.view.bootOrder!.map((e) => [e.id, e.protocol ?? e.bootType]),
    before.bootOrder!.map((e) => [e.id, (e.protocol ?? e.bootType).replace("v4", "v6")]),
  );
  await host.ok(["nic", "remove", "v6", "Network Adapter"]);
  const after = await host.json<FirmwareView>(["firmware", "get", "v6"]);
  assert.deepEqual(after.bootOrder!.map((e) => e.device?.ref ?? null), ["SCSI 0:0", "Network Adapter 2", "Network Adapter 2"]);
});
