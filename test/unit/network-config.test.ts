import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  SubnetError,
  type HostNetworks,
  checkSwitchIpv6Prefix,
  checkSwitchSubnet,
  dhcpRange,
  formatIpv6,
  gatewayAddress,
  ipv6DhcpRange,
  ipv6Gateway,
  parseIpv4Subnet,
  parseIpv6,
  parseIpv6Prefix,
  subnetsOverlap,
  ulaPrefix,
} from "../../src/network/addr.js";
import { dnsmasqArgv } from "../../src/network/dnsmasq.js";
import { parseHostNetworks, readHostNetworks } from "../../src/network/host.js";
import { firewallScript } from "../../src/network/firewall.js";
import { NAMES } from "../../src/network/names.js";
import { SwitchConfig } from "../../src/network/schema.js";
import { SwitchStore } from "../../src/network/store.js";
import { grubNetCfg, ipxeScript, markerProfile } from "../../src/images/netboot.js";
import { MacPool, validateVm, type VmConfig } from "../../src/model/index.js";

const ID = "3f2a9c1e-1111-4222-8333-444455556666";
const paths = { pidFile: "/h/sw/dnsmasq.pid", logFile: "/h/sw/dnsmasq.log", leaseFile: "/h/sw/leases" };

function sw(over: Partial<SwitchConfig> = {}): SwitchConfig {
  return SwitchConfig.parse({ formatVersion: 1, name: "lab", id: ID, type: "Internal", subnet: "10.81.0.0/24", dhcp: true, createdAt: "2026-01-01T00:00:00Z", ...over });
}

test("IPv4 subnets: parsing, the switch address, the DHCP pool and overlap", () => {
  const s = parseIpv4Subnet("192.168.50.0/24");
  assert.equal(gatewayAddress(s), "192.168.50.1");
  assert.deepEqual(dhcpRange(s), { start: "192.168.50.64", end: "192.168.50.254" });
  assert.deepEqual(dhcpRange(parseIpv4Subnet("10.0.0.0/29")), { start: "10.0.0.2", end: "10.0.0.6" });
  assert.throws(() => parseIpv4Subnet("192.168.50.7/24"), /host bits set; did you mean 192\.168\.50\.0\/24/);
  assert.throws(() => parseIpv4Subnet("10.0.0.0/8"), /between \/16 and \/29/);
  assert.throws(() => parseIpv4Subnet("10.0.300.0/24"), /not an IPv4 address/);
  assert.ok(subnetsOverlap(parseIpv4Subnet("10.1.0.0/16"), parseIpv4Subnet("10.1.7.0/24")));
  assert.ok(!subnetsOverlap(parseIpv4Subnet("10.1.6.0/24"), parseIpv4Subnet("10.1.7.0/24")));
});

test("IPv6: RFC 5952 text, /64 prefixes, the switch address, the DHCPv6 pool, ULA prefixes", () => {
  assert.equal(formatIpv6(parseIpv6("FD00:0081:0000:0000:0000:0000:0000:0001")), "fd00:81::1");
  assert.equal(formatIpv6(parseIpv6("2001:db8:0:0:1:0:0:1")), "2001:db8::1:0:0:1");
  assert.equal(parseIpv6Prefix("fd00:0081::/64"), "fd00:81::/64");
  assert.throws(() => parseIpv6Prefix("fd00:81::/48"), /use a \/64/);
  assert.throws(() => parseIpv6Prefix("fd00:81::5/64"), /bits set past \/64/);
  assert.equal(ipv6Gateway("fd00:81::/64"), "fd00:81::1");
  assert.deepEqual(ipv6DhcpRange("fd00:81::/64"), { start: "fd00:81::1:0", end: "fd00:81::1:ffff" });
  const ula = ulaPrefix(ID);
  assert.match(ula, /^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::\/64$/);
  assert.equal(ulaPrefix(ID), ula, "stable for one switch");
});

test("host-side names fit Linux's 15-byte interface names and are stable", () => {
  for (const n of [NAMES.bridge(ID), NAMES.serviceVethHost(ID), NAMES.serviceVethNs(ID), NAMES.tap(ID, "Legacy Network Adapter 2")]) {
    assert.ok(n.length <= 15, n);
    assert.match(n, /^vmh/);
  }
  assert.equal(NAMES.bridge(ID), "vmhbr3f2a9c1e");
  assert.equal(NAMES.tap(ID, "a"), NAMES.tap(ID, "a"));
  assert.notEqual(NAMES.tap(ID, "a"), NAMES.tap(ID, "b"));
});

test("dnsmasq: DHCPv4, RA + stateful DHCPv6, TFTP, boot file (v4) and boot-file URL option 59 (v6)", () => {
  const a = dnsmasqArgv(sw({ ipv6Prefix: "fd00:81::/64", boot: { dir: "/srv/boot", file: "bootx64.efi" } }), "vmhbr3f2a9c1e", paths);
  assert.ok(a.includes("--conf-file=/dev/null"));
  assert.ok(a.includes("--port=0"));
  assert.ok(a.includes("--interface=vmhbr3f2a9c1e"));
  assert.ok(a.includes("--dhcp-range=10.81.0.64,10.81.0.254,255.255.255.0,1h"));
  assert.ok(a.includes("--dhcp-range=fd00:81::1:0,fd00:81::1:ffff,64,1h"));
  assert.ok(a.includes("--enable-ra"));
  assert.ok(a.includes("--ra-param=vmhbr3f2a9c1e,60,0"));
  assert.ok(a.includes("--enable-tftp"));
  assert.ok(a.includes("--tftp-root=/srv/boot"));
  assert.ok(a.includes("--dhcp-boot=bootx64.efi"));
  assert.ok(a.includes("--dhcp-option=option6:bootfile-url,tftp://[fd00:81::1]/bootx64.efi"));
  assert.ok(a.includes("--dhcp-option=option:router"), "an internal switch offers no default gateway");
  assert.ok(a.includes(`--pid-file=${paths.pidFile}`));
  const nat = dnsmasqArgv(sw({ type: "NAT" }), "br", paths);
  assert.ok(!nat.includes("--dhcp-option=option:router"), "a NAT switch is the VMs' gateway");
  assert.ok(!nat.some((x) => x.includes("tftp")));
  assert.ok(!nat.includes("--enable-ra"), "no IPv6 without a prefix");
});

test("nft: NAT masquerades the subnet out of the uplink; a private switch drops what the bridge hands the host", () => {
  const natScript = firewallScript({ switchId: ID, switchName: "nat", bridge: "vmhbr3f2a9c1e", masquerade: { subnet: "10.64.0.0/24", uplink: "wan0" } });
  assert.match(natScript, /^table ip vmhost_3f2a9c1e\ndelete table ip vmhost_3f2a9c1e\ntable ip vmhost_3f2a9c1e \{/);
  assert.match(natScript, /type nat hook postrouting priority srcnat/);
  assert.match(natScript, /ip saddr 10\.64\.0\.0\/24 ip daddr != 10\.64\.0\.0\/24 oifname != "vmhbr3f2a9c1e" oifname "wan0" masquerade/);
  const priv = firewallScript({ switchId: ID, switchName: "p", bridge: "vmhbr3f2a9c1e", isolateHost: true });
  assert.match(priv, /table netdev vmhost_3f2a9c1e/);
  assert.match(priv, /type filter hook ingress device "vmhbr3f2a9c1e" priority filter; policy drop;/);
  assert.equal(firewallScript({ switchId: ID, switchName: "i", bridge: "b" }).trim(), "");
  assert.throws(() => firewallScript({ switchId: ID, switchName: 'x"; flush ruleset', bridge: "b", isolateHost: true }), /unsafe text/);
});

test("switch definitions: atomic JSON files, case-insensitive names, a damaged file is reported by name", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmh-sw-"));
  try {
    const store = new SwitchStore(join(dir, "switches"));
    await store.create(sw());
    assert.equal((await store.get("LAB")).id, ID);
    await assert.rejects(store.create(sw({ name: "Lab", id: "3f2a9c1e-1111-4222-8333-444455556667" })), /already exists/);
    const text = await readFile(join(dir, "switches", "lab.json"), "utf8");
    assert.equal(JSON.parse(text).type, "Internal");
    await mkdir(join(dir, "switches"), { recursive: true });
    await writeFile(join(dir, "switches", "broken.json"), "{not json");
    const listed = await store.list();
    assert.deepEqual(listed.map((l) => l.ok), [false, true]);
    assert.match((listed[0] as { error: string }).error, /broken\.json is not valid JSON/);
    await assert.rejects(store.get("broken"), /switch file .*broken\.json is damaged/);
    await store.remove(await store.get("lab"));
    assert.equal(await store.find("lab"), undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("payload: the iPXE script fetches kernel and initrd from its TFTP server; the profile prints the marker", () => {
  const s = ipxeScript("console=ttyS0,115200 quiet");
  assert.match(s, /^#!ipxe\n/);
  assert.match(s, /kernel tftp:\/\/\$\{next-server\}\/vmlinuz console=ttyS0,115200 quiet vmhost\.netboot=ipxe/);
  assert.match(s, /initrd tftp:\/\/\$\{next-server\}\/initrd\.img/);
  const g = grubNetCfg("console=ttyS0,115200 quiet");
  assert.match(g, /^linux \/vmlinuz console=ttyS0,115200 quiet vmhost\.netboot=uefi-secure-boot$/m);
  assert.match(g, /^initrd \/initrd\.img$/m);
  const p = markerProfile("m1");
  assert.match(p, /^echo "vmhost-netboot: payload m1 running \(via /);
  assert.match(p, /export PATH=/, "the appliance's own profile follows");
});

test("MACs: the pool hands out 00:15:5D addresses never twice, across restarts; one MAC twice on a switch is refused", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmh-mac-"));
  try {
    const file = join(dir, "mac-pool.json");
    const first = await Promise.all(Array.from({ length: 20 }, () => new MacPool(file).allocate()));
    const pool = new MacPool(file);
    const seq = [...first, await pool.allocate(), await pool.allocate()];
    assert.equal(new Set(seq).size, seq.length);
    for (const m of seq) assert.match(m, /^00:15:5D:/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const nic = (mac: string, switchName: string) => ({ name: "n", type: "Synthetic" as const, macAddress: mac, dynamicMac: false, switchName, pciSlot: 8 });
  const vm = (name: string, id: string, nics: ReturnType<typeof nic>[]): VmConfig =>
    ({
      formatVersion: 2, checkpointType: "Production", display: false, name, id, generation: 2, processorCount: 1, memoryMiB: 512, notes: "", createdAt: "x", hardDisks: [], dvdDrives: [], networkAdapters: nics,
      firmware: { secureBoot: false, secureBootTemplate: "MicrosoftUEFICertificateAuthority", preferredNetworkBootProtocol: "IPv4", pauseAfterBootFailure: false, startupOrder: [] },
    }) as VmConfig;
  const host = { logicalProcessors: 2, memoryMiB: 4096 };
  const a = vm("a", "00000000-0000-4000-8000-000000000001", [nic("00:15:5D:00:00:01", "lab")]);
  assert.throws(() => validateVm(vm("b", "00000000-0000-4000-8000-000000000002", [nic("00:15:5D:00:00:01", "LAB")]), host, [a]), /already used on switch "LAB" by adapter "n" of VM "a"/);
  validateVm(vm("b", "00000000-0000-4000-8000-000000000002", [nic("00:15:5D:00:00:01", "other")]), host, [a]);
});

/** A typical host, in the JSON ip prints: a LAN on eth0, Docker's bridge, a VPN route, global IPv6. */
const IP_ROUTE4 = JSON.stringify([
  { dst: "default", gateway: "192.168.1.1", dev: "eth0", protocol: "dhcp", metric: 100, flags: [] },
  { dst: "10.8.0.0/16", dev: "tun0", scope: "link", flags: [] },
  { dst: "172.17.0.0/16", dev: "docker0", protocol: "kernel", scope: "link", prefsrc: "172.17.0.1", flags: ["linkdown"] },
  { dst: "192.168.1.0/24", dev: "eth0", protocol: "kernel", scope: "link", prefsrc: "192.168.1.20", metric: 100, flags: [] },
  { dst: "203.0.113.7", gateway: "192.168.1.1", dev: "eth0", flags: [] },
]);
const IP_ROUTE6 = JSON.stringify([
  { dst: "2001:db8:1:2::/64", dev: "eth0", protocol: "ra", metric: 100, flags: [], pref: "medium" },
  { dst: "2001:db8:ff00::/40", dev: "wg0", metric: 1024, flags: [], pref: "medium" },
  { dst: "fe80::/64", dev: "eth0", protocol: "kernel", metric: 256, flags: [], pref: "medium" },
  { dst: "default", gateway: "fe80::1", dev: "eth0", protocol: "ra", metric: 100, flags: [], pref: "medium" },
]);
const IP_ADDR = JSON.stringify([
  { ifindex: 1, ifname: "lo", flags: ["LOOPBACK", "UP"], addr_info: [{ family: "inet", local: "127.0.0.1", prefixlen: 8, scope: "host" }, { family: "inet6", local: "::1", prefixlen: 128, scope: "host" }] },
  { ifindex: 2, ifname: "eth0", flags: ["UP"], addr_info: [{ family: "inet", local: "192.168.1.20", prefixlen: 24, broadcast: "192.168.1.255", scope: "global" }, { family: "inet6", local: "2001:db8:1:2::20", prefixlen: 64, scope: "global" }, { family: "inet6", local: "fe80::20", prefixlen: 64, scope: "link" }] },
  { ifindex: 3, ifname: "docker0", flags: ["UP"], addr_info: [{ family: "inet", local: "172.17.0.1", prefixlen: 16, scope: "global" }] },
  { ifindex: 4, ifname: "vps0", flags: ["UP"], addr_info: [{ family: "inet", local: "100.64.9.9", prefixlen: 32, scope: "global" }] },
  { ifindex: 5, ifname: "ifb0", flags: ["NOARP"], addr_info: [] },
]);

function refusedAs(code: "subnet-reserved" | "subnet-in-use", f: () => void, why: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof SubnetError, `a SubnetError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.equal(e.status, code === "subnet-reserved" ? 400 : 409);
    assert.match(e.message, why);
    return true;
  });
}

test("host networks: ip's JSON for routes and addresses is read into routes and addresses", () => {
  const h = parseHostNetworks(IP_ROUTE4, IP_ROUTE6, IP_ADDR);
  assert.deepEqual(h.routes.slice(0, 2), [{ dst: "default", dev: "eth0" }, { dst: "10.8.0.0/16", dev: "tun0" }]);
  assert.equal(h.routes.length, 9);
  assert.deepEqual(h.addresses.filter((a) => a.dev === "eth0"), [
    { dev: "eth0", family: "inet", local: "192.168.1.20", prefixlen: 24 },
    { dev: "eth0", family: "inet6", local: "2001:db8:1:2::20", prefixlen: 64 },
    { dev: "eth0", family: "inet6", local: "fe80::20", prefixlen: 64 },
  ]);
  assert.deepEqual(parseHostNetworks("", "", ""), { routes: [], addresses: [] });
  assert.throws(() => parseHostNetworks('[{"gateway":"x"}]', "", ""), /dst/);
});

test("switch subnets: the host's own networks and routes are refused, naming them; free ones pass", () => {
  const h = parseHostNetworks(IP_ROUTE4, IP_ROUTE6, IP_ADDR);
  const check = (cidr: string) => () => checkSwitchSubnet(parseIpv4Subnet(cidr), h);
  // The example: the host's LAN as a switch subnet, whose gateway address is the LAN router's.
  refusedAs("subnet-in-use", check("192.168.1.0/24"), /^subnet 192\.168\.1\.0\/24 overlaps the host's own network 192\.168\.1\.0\/24 \(address 192\.168\.1\.20\/24 on eth0\): the host would take 192\.168\.1\.1 /);
  refusedAs("subnet-in-use", check("192.168.0.0/16"), /host's own network 192\.168\.1\.0\/24/);
  refusedAs("subnet-in-use", check("172.17.5.0/24"), /172\.17\.0\.0\/16 \(address 172\.17\.0\.1\/16 on docker0\)/);
  refusedAs("subnet-in-use", check("10.8.3.0/24"), /the host's route to 10\.8\.0\.0\/16 \(via tun0\)/);
  refusedAs("subnet-in-use", check("203.0.113.0/24"), /route to 203\.0\.113\.7\/32/);
  refusedAs("subnet-in-use", check("100.64.9.0/24"), /address 100\.64\.9\.9\/32 on vps0/);
  refusedAs("subnet-in-use", check("192.168.1.0/24"), /leave --subnet out and vmhost picks a free one/);
  for (const free of ["192.168.50.0/24", "10.9.0.0/16", "172.18.0.0/24", "192.168.2.0/29"]) checkSwitchSubnet(parseIpv4Subnet(free), h);
});

test("switch subnets: reserved ranges are refused whatever the host has", () => {
  const none: HostNetworks = { routes: [], addresses: [] };
  const check = (cidr: string) => () => checkSwitchSubnet(parseIpv4Subnet(cidr), none);
  refusedAs("subnet-reserved", check("127.0.0.0/24"), /overlaps 127\.0\.0\.0\/8, which is loopback/);
  refusedAs("subnet-reserved", check("0.0.0.0/24"), /overlaps 0\.0\.0\.0\/8, which is "this network"/);
  refusedAs("subnet-reserved", check("169.254.0.0/16"), /link-local/);
  refusedAs("subnet-reserved", check("224.0.0.0/24"), /multicast/);
  refusedAs("subnet-reserved", check("239.255.0.0/16"), /multicast/);
  refusedAs("subnet-reserved", check("240.0.0.0/24"), /240\.0\.0\.0\/4/);
  refusedAs("subnet-reserved", check("255.255.255.0/24"), /broadcast address 255\.255\.255\.255/);
  refusedAs("subnet-reserved", check("127.0.0.0/24"), /a private range such as 10\.0\.0\.0\/8/);
  for (const ok of ["10.0.0.0/16", "172.16.0.0/24", "192.168.0.0/24", "100.64.0.0/24", "223.255.255.0/24", "1.0.0.0/24"]) checkSwitchSubnet(parseIpv4Subnet(ok), none);
});

test("switch IPv6 prefixes: loopback, link-local, multicast and the host's own prefixes and routes are refused", () => {
  const h = parseHostNetworks(IP_ROUTE4, IP_ROUTE6, IP_ADDR);
  const none: HostNetworks = { routes: [], addresses: [] };
  const check = (prefix: string, host = none) => () => checkSwitchIpv6Prefix(parseIpv6Prefix(prefix), host);
  refusedAs("subnet-reserved", check("::/64"), /overlaps ::1\/128, which is loopback/);
  refusedAs("subnet-reserved", check("fe80::/64"), /fe80::\/10, which is link-local/);
  refusedAs("subnet-reserved", check("febf:1::/64"), /link-local/);
  refusedAs("subnet-reserved", check("ff02::/64"), /ff00::\/8, which is multicast/);
  refusedAs("subnet-in-use", check("2001:db8:1:2::/64", h), /host's own network 2001:db8:1:2::\/64 \(address 2001:db8:1:2::20\/64 on eth0\)/);
  refusedAs("subnet-in-use", check("2001:db8:ff12:1::/64", h), /route to 2001:db8:ff00::\/40 \(via wg0\)/);
  for (const ok of ["fd12:3456:789a:1::/64", "2001:db8:1:3::/64", "fec0::/64"]) checkSwitchIpv6Prefix(parseIpv6Prefix(ok), h);
  checkSwitchIpv6Prefix(ulaPrefix(ID), h);
});

test("host networks on this machine: read with ip; its own LAN subnet is refused as a switch subnet", async () => {
  const h = await readHostNetworks();
  assert.ok(h.addresses.some((a) => a.dev === "lo" && a.family === "inet" && a.local === "127.0.0.1" && a.prefixlen === 8), "lo's 127.0.0.1/8");
  const lan = h.addresses.find((a) => a.family === "inet" && !a.local.startsWith("127."));
  assert.ok(lan, "this machine has an IPv4 address besides loopback");
  // The subnet (within what switches take, /16../29) holding that address.
  const len = Math.min(Math.max(lan.prefixlen, 16), 29);
  const n = lan.local.split(".").map(Number).reduce((acc, b) => acc * 256 + b, 0);
  const net = n - (n % 2 ** (32 - len));
  const cidr = `${[net >>> 24, (net >>> 16) & 255, (net >>> 8) & 255, net & 255].join(".")}/${len}`;
  refusedAs("subnet-in-use", () => checkSwitchSubnet(parseIpv4Subnet(cidr), h), new RegExp(`on ${lan.dev}`));
});
