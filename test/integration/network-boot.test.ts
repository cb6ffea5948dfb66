import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TestHost } from "../helpers/harness.js";
import { TestNetns, killAndDelete, switchNamespaces } from "../helpers/netns.js";

/**
 * Network boot end to end over internal switches with DHCP (dnsmasq: DHCPv4, RA, stateful
 * DHCPv6 with option 59, TFTP), inside a namespace this test makes:
 *   Gen2 over PXEv4 (OVMF's own stack on the synthetic adapter),
 *   a Gen2 appliance VM (Secure Boot on) with preferred protocol IPv6 and its adapter first:
 *     PXEv6, then Debian's signed shim and netboot GRUB and the signed kernel, all over TFTP on IPv6,
 *   Gen1 over its legacy adapter (SeaBIOS + iPXE's e1000 ROM, an iPXE script).
 * Each boots the payload `vmhost netboot build` made from the appliance, which prints a marker.
 */
let hostNs: TestNetns;
let host: TestHost;
let bootDir: string;
const MARKER = "vmhost-netboot: payload pxe-test running";
const PXE_TIMEOUT_MS = 240_000;

before(async () => {
  hostNs = await TestNetns.create("boot");
  host = await TestHost.create({ netns: hostNs.name });
  bootDir = await mkdtemp(join(tmpdir(), "vmh-boot-"));
});

after(async () => {
  const serviceNamespaces = await switchNamespaces(host.home).catch(() => [] as string[]);
  for (const s of ["pxe", "pxe6", "pxe1"]) await host.cli(["switch", "remove", s], 30_000).catch(() => undefined);
  await host.cleanup();
  for (const ns of serviceNamespaces) await killAndDelete(ns);
  await hostNs.cleanup();
  await rm(bootDir, { recursive: true, force: true });
});

test("netboot build makes a UEFI payload and an iPXE one; switches serve them", { timeout: 300_000 }, async () => {
  const r = await host.json<{ files: string[]; markerLine: string }>(["netboot", "build", bootDir, "--marker", "pxe-test"]);
  assert.equal(r.markerLine, MARKER);
  for (const f of ["bootx64.efi", "shimx64.efi", "grubx64.efi", "grub/grub.cfg", "boot.ipxe", "vmlinuz", "initrd.img"]) {
    const st = await stat(join(bootDir, f));
    assert.ok(st.size > 0 && (st.mode & 0o004) !== 0, `${f} is there and world-readable (dnsmasq's TFTP serves only those)`);
  }
  assert.equal((await readFile(join(bootDir, "bootx64.efi"))).subarray(0, 2).toString(), "MZ", "a PE image");
  await host.ok(["switch", "new", "pxe", "--type", "internal", "--subnet", "10.81.0.0/24", "--ipv6-prefix", "fd00:81::/64", "--dhcp", "on", "--boot-dir", bootDir, "--boot-file", "bootx64.efi"]);
  await host.ok(["switch", "new", "pxe6", "--type", "internal", "--subnet", "10.83.0.0/24", "--ipv6-prefix", "fd00:83::/64", "--dhcp", "on", "--boot-dir", bootDir, "--boot-file", "shimx64.efi"]);
  await host.ok(["switch", "new", "pxe1", "--type", "internal", "--subnet", "10.82.0.0/24", "--dhcp", "on", "--boot-dir", bootDir, "--boot-file", "boot.ipxe"]);
  const sw = await host.json<{ status: { dnsmasqPid?: number } }>(["switch", "show", "pxe"]);
  assert.ok(sw.status.dnsmasqPid);
  const argv = (await readFile(`/proc/${sw.status.dnsmasqPid}/cmdline`, "utf8")).split("\0");
  assert.ok(argv.includes("--dhcp-boot=bootx64.efi"));
  assert.ok(argv.includes("--dhcp-option=option6:bootfile-url,tftp://[fd00:81::1]/bootx64.efi"));
  assert.ok(argv.includes("--enable-ra"));
});

test("a Gen2 VM boots the UEFI payload over PXEv4", { timeout: PXE_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["new", "g2v4", "--generation", "2", "--memory", "512M"]);
  await host.ok(["nic", "connect", "g2v4", "Network Adapter", "pxe"]);
  await host.ok(["start", "g2v4"]);
  const text = await host.waitConsole("g2v4", `${MARKER} (via uefi)`, PXE_TIMEOUT_MS);
  assert.match(text, />>Start PXE over IPv4/);
  assert.match(text, /Station IP address is 10\.81\.0\.\d+/);
  assert.match(text, /NBP filename is bootx64\.efi/);
  assert.match(text, /BdsDxe: starting Boot\d+ "UEFI PXEv4 \(MAC:00155D/);
  await host.ok(["turn-off", "g2v4"]);
});

test("a Gen2 appliance VM with preferred protocol IPv6 boots over PXEv6 with Secure Boot on (DHCPv6 + TFTP over IPv6)", { timeout: PXE_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["new", "g2v6", "--generation", "2", "--appliance", "--memory", "512M"]);
  await host.ok(["nic", "connect", "g2v6", "Network Adapter", "pxe6"]);
  await host.ok(["firmware", "set", "g2v6", "--preferred-network-boot-protocol", "ipv6", "--first-boot-device", "Network Adapter"]);
  await host.ok(["start", "g2v6"]);
  const text = await host.waitConsole("g2v6", `${MARKER} (via uefi-secure-boot)`, PXE_TIMEOUT_MS);
  assert.match(text, />>Start PXE over IPv6/);
  assert.doesNotMatch(text, />>Start PXE over IPv4/);
  assert.match(text, /Station IP address is FD00:83:0:0:0:0:1:[0-9A-F]+/);
  assert.match(text, /Server IP address is FD00:83:0:0:0:0:0:1/);
  assert.match(text, /NBP filename is shimx64\.efi/);
  assert.match(text, /BdsDxe: starting Boot\d+ "UEFI PXEv6 \(MAC:00155D/);
  assert.match(text, /vmhost-appliance: secure boot enabled/);
  // shim fetched GRUB, and GRUB its configuration, the kernel and the initramfs, all over IPv6.
  const sw = await host.json<{ paths: { state: string } }>(["switch", "show", "pxe6"]);
  const log = await readFile(join(sw.paths.state, "dnsmasq.log"), "utf8");
  for (const f of ["shimx64.efi", "grubx64.efi", "grub/grub.cfg", "vmlinuz", "initrd.img"]) {
    assert.match(log, new RegExp(`sent \\S*/${f.replace(".", "\\.")} to fd00:83::`), `${f} went over TFTP on IPv6`);
  }
  console.log(text.split("\n").filter((l) => /PXE over|Station IP|NBP|BdsDxe: starting|secure boot|vmhost-netboot/.test(l)).join("\n"));
  await host.ok(["turn-off", "g2v6"]);
});

test("a Gen1 VM boots over its legacy adapter: iPXE's e1000 ROM runs the script and fetches kernel and initrd over TFTP", { timeout: PXE_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["new", "g1", "--generation", "1", "--memory", "512M"]);
  await host.ok(["nic", "remove", "g1", "Network Adapter"]);
  await host.ok(["nic", "add", "g1", "--legacy", "--switch", "pxe1"]);
  await host.ok(["start", "g1"]);
  await host.waitConsole("g1", `${MARKER} (via ipxe)`, PXE_TIMEOUT_MS);
  const sw = await host.json<{ paths: { state: string } }>(["switch", "show", "pxe1"]);
  const log = await readFile(join(sw.paths.state, "dnsmasq.log"), "utf8");
  assert.match(log, /sent \S*boot\.ipxe to 10\.82\.0\./);
  assert.match(log, /sent \S*vmlinuz to 10\.82\.0\./);
  assert.match(log, /sent \S*initrd\.img to 10\.82\.0\./);
  await host.ok(["turn-off", "g1"]);
});
