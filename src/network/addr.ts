import { createHash } from "node:crypto";
import { VmhostError } from "../util/errors.js";

/** IPv4 subnets and IPv6 /64 prefixes of switches: parsing and the addresses derived from them. */

export interface Ipv4Subnet {
  /** Network address as a 32-bit number. */
  network: number;
  prefixLength: number;
}

export function parseIpv4(text: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not an IPv4 address`);
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) throw new Error(`"${text}" is not an IPv4 address`);
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

function maskOf(prefixLength: number): number {
  return prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
}

/** "192.168.50.0/24"; the host part must be zero, and the subnet must leave room for DHCP (/16../29). */
export function parseIpv4Subnet(text: string): Ipv4Subnet {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(text.trim());
  if (!m) throw new Error(`subnet "${text}" must look like 192.168.50.0/24`);
  const prefixLength = Number(m[2]);
  if (prefixLength < 16 || prefixLength > 29) throw new Error(`subnet "${text}": the prefix length must be between /16 and /29`);
  const addr = parseIpv4(m[1]!);
  const network = (addr & maskOf(prefixLength)) >>> 0;
  if (network !== addr) throw new Error(`subnet "${text}" has host bits set; did you mean ${formatIpv4(network)}/${prefixLength}?`);
  return { network, prefixLength };
}

export function formatIpv4Subnet(s: Ipv4Subnet): string {
  return `${formatIpv4(s.network)}/${s.prefixLength}`;
}

export function netmask(s: Ipv4Subnet): string {
  return formatIpv4(maskOf(s.prefixLength));
}

/** The switch's own address (host side or its DHCP service): the first usable one, as Hyper-V's NAT gateway. */
export function gatewayAddress(s: Ipv4Subnet): string {
  return formatIpv4(s.network + 1);
}

/** DHCP hands out the upper part of the subnet, leaving the lower part for static addresses. */
export function dhcpRange(s: Ipv4Subnet): { start: string; end: string } {
  const size = 2 ** (32 - s.prefixLength);
  const first = s.network + Math.max(2, Math.floor(size / 4));
  const last = s.network + size - 2;
  return { start: formatIpv4(first), end: formatIpv4(last) };
}

export function ipv4InSubnet(addr: string, s: Ipv4Subnet): boolean {
  return ((parseIpv4(addr) & maskOf(s.prefixLength)) >>> 0) === s.network;
}

export function subnetsOverlap(a: Ipv4Subnet, b: Ipv4Subnet): boolean {
  const p = Math.min(a.prefixLength, b.prefixLength);
  return ((a.network & maskOf(p)) >>> 0) === ((b.network & maskOf(p)) >>> 0);
}

/** Eight 16-bit groups. */
export function parseIpv6(text: string): number[] {
  const t = text.trim().toLowerCase();
  if (!/^[0-9a-f:]+$/.test(t) || t.split("::").length > 2) throw new Error(`"${text}" is not an IPv6 address`);
  const [head, tail] = t.includes("::") ? t.split("::") : [t, undefined];
  const h = head ? head.split(":") : [];
  const tl = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const fill = tail === undefined ? 0 : 8 - h.length - tl.length;
  if (fill < 0 || (tail === undefined && h.length !== 8)) throw new Error(`"${text}" is not an IPv6 address`);
  const groups = [...h, ...Array<string>(fill).fill("0"), ...tl].map((g) => {
    if (!/^[0-9a-f]{1,4}$/.test(g)) throw new Error(`"${text}" is not an IPv6 address`);
    return parseInt(g, 16);
  });
  if (groups.length !== 8) throw new Error(`"${text}" is not an IPv6 address`);
  return groups;
}

/** RFC 5952 text form. */
export function formatIpv6(groups: readonly number[]): string {
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

/** A switch's IPv6 prefix is a /64 (what SLAAC, RA and OVMF's PXEv6 expect); returned as "fd12:3456:789a:1::/64". */
export function parseIpv6Prefix(text: string): string {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(text.trim());
  if (!m) throw new Error(`IPv6 prefix "${text}" must look like fd00:1234:5678:1::/64`);
  if (Number(m[2]) !== 64) throw new Error(`IPv6 prefix "${text}": switches use a /64`);
  const g = parseIpv6(m[1]!);
  if (g.slice(4).some((x) => x !== 0)) throw new Error(`IPv6 prefix "${text}" has bits set past /64`);
  return `${formatIpv6(g)}/64`;
}

function prefixGroups(prefix: string): number[] {
  return parseIpv6(prefix.split("/")[0]!).slice(0, 4);
}

/** ::1 in the prefix: the switch's own IPv6 address. */
export function ipv6Gateway(prefix: string): string {
  return formatIpv6([...prefixGroups(prefix), 0, 0, 0, 1]);
}

/** The stateful DHCPv6 pool: ::1:0 .. ::1:ffff of the prefix. */
export function ipv6DhcpRange(prefix: string): { start: string; end: string } {
  const p = prefixGroups(prefix);
  return { start: formatIpv6([...p, 0, 0, 1, 0]), end: formatIpv6([...p, 0, 0, 1, 0xffff]) };
}

/** A unique local prefix (RFC 4193: fd + 40-bit global id) derived from a seed such as the switch id. */
export function ulaPrefix(seed: string): string {
  const h = createHash("sha256").update(seed).digest();
  const groups = [0xfd00 | h[0]!, (h[1]! << 8) | h[2]!, (h[3]! << 8) | h[4]!, (h[5]! << 8) | h[6]!];
  return `${formatIpv6([...groups, 0, 0, 0, 0])}/64`;
}

// ---- Is a switch's addressing free to use on this host? -------------------------------------

/**
 * One route of the host as `ip -j route show` (and `ip -j -6 route show`) gives it. `dst` is
 * "default", an address ("10.0.0.1", "fd00::1") or a prefix ("192.168.1.0/24", "fd00::/64").
 */
export interface HostRoute {
  dst: string;
  dev?: string;
}

/** One address of the host as `ip -j addr show` gives it (an entry of a link's addr_info). */
export interface HostAddress {
  dev: string;
  family: "inet" | "inet6";
  local: string;
  prefixlen: number;
}

/** The host's routes (main table, both families) and addresses; read by readHostNetworks() in ./host.ts. */
export interface HostNetworks {
  routes: HostRoute[];
  addresses: HostAddress[];
}

/** A switch's subnet or prefix that cannot be used: reserved (400) or used by the host (409). */
export class SubnetError extends VmhostError {
  constructor(code: "subnet-reserved" | "subnet-in-use", message: string) {
    super(code, message, code === "subnet-reserved" ? 400 : 409);
    this.name = "SubnetError";
  }
}

/** IPv4 ranges a switch may not use, with the rule that reserves each. */
export const RESERVED_IPV4: readonly { cidr: string; what: string }[] = [
  { cidr: "0.0.0.0/8", what: `"this network" (RFC 1122 section 3.2.1.3)` },
  { cidr: "127.0.0.0/8", what: "loopback (RFC 1122 section 3.2.1.3)" },
  { cidr: "169.254.0.0/16", what: "link-local (RFC 3927)" },
  { cidr: "224.0.0.0/4", what: "multicast (RFC 5771)" },
  { cidr: "240.0.0.0/4", what: "reserved, holding the broadcast address 255.255.255.255 (RFC 1112 section 4, RFC 919)" },
];

/** IPv6 ranges a switch's /64 may not overlap (RFC 4291 sections 2.5.2, 2.5.3, 2.5.6, 2.7). */
export const RESERVED_IPV6: readonly { cidr: string; what: string }[] = [
  { cidr: "::1/128", what: "loopback (RFC 4291 section 2.5.3)" },
  { cidr: "fe80::/10", what: "link-local (RFC 4291 section 2.5.6)" },
  { cidr: "ff00::/8", what: "multicast (RFC 4291 section 2.7)" },
];

const SUBNET_ADVICE = "pick a subnet the host does not use, or leave --subnet out and vmhost picks a free one";
const PREFIX_ADVICE = "pick a prefix the host does not use, or leave --ipv6-prefix out and vmhost makes a unique local one (fd00::/8)";

/** "a.b.c.d/n" or a bare address (/32) as an Ipv4Subnet, any prefix length, host bits cleared. */
function ipv4Cidr(text: string): Ipv4Subnet {
  const [a, p] = text.split("/");
  const prefixLength = p === undefined ? 32 : Number(p);
  if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 32) throw new Error(`"${text}" is not an IPv4 prefix`);
  return { network: (parseIpv4(a!) & maskOf(prefixLength)) >>> 0, prefixLength };
}

interface Ipv6Cidr {
  bits: bigint;
  prefixLength: number;
}

function ipv6Cidr(text: string): Ipv6Cidr {
  const [a, p] = text.split("/");
  const prefixLength = p === undefined ? 128 : Number(p);
  if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 128) throw new Error(`"${text}" is not an IPv6 prefix`);
  const bits = parseIpv6(a!).reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
  return { bits: bits & ipv6Mask(prefixLength), prefixLength };
}

function ipv6Mask(prefixLength: number): bigint {
  return prefixLength === 0 ? 0n : ((1n << BigInt(prefixLength)) - 1n) << BigInt(128 - prefixLength);
}

function ipv6Overlap(a: Ipv6Cidr, b: Ipv6Cidr): boolean {
  const m = ipv6Mask(Math.min(a.prefixLength, b.prefixLength));
  return (a.bits & m) === (b.bits & m);
}

/** Entries that do not parse (a route type ip prints that vmhost does not know) are skipped, not fatal. */
function tryParse<T>(f: () => T): T | undefined {
  try {
    return f();
  } catch {
    return undefined;
  }
}

/**
 * Throws SubnetError when a switch's IPv4 subnet is reserved (RESERVED_IPV4: "subnet-reserved",
 * 400) or overlaps a network the host already has: one of its addresses' networks, or a route
 * of its main table other than the default route ("subnet-in-use", 409). The host would
 * otherwise put the switch's gateway address (the subnet's first) on the bridge and send that
 * network's traffic there, e.g. taking its LAN gateway's address. Pure: the caller reads the
 * host's state (readHostNetworks) and leaves out what belongs to the switch itself.
 */
export function checkSwitchSubnet(subnet: Ipv4Subnet, host: HostNetworks): void {
  const text = formatIpv4Subnet(subnet);
  for (const r of RESERVED_IPV4) {
    const range = ipv4Cidr(r.cidr);
    if (subnetsOverlap(subnet, range)) {
      throw new SubnetError("subnet-reserved", `subnet ${text} overlaps ${r.cidr}, which is ${r.what}: a switch needs a private range such as 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16`);
    }
  }
  for (const a of host.addresses) {
    if (a.family !== "inet") continue;
    const net = tryParse(() => ipv4Cidr(`${a.local}/${a.prefixlen}`));
    if (net && subnetsOverlap(subnet, net)) {
      throw new SubnetError(
        "subnet-in-use",
        `subnet ${text} overlaps the host's own network ${formatIpv4Subnet(net)} (address ${a.local}/${a.prefixlen} on ${a.dev}): ` +
          `the host would take ${gatewayAddress(subnet)} on the switch and send that network's traffic there; ${SUBNET_ADVICE}`,
      );
    }
  }
  for (const r of host.routes) {
    if (r.dst === "default" || r.dst.includes(":")) continue;
    const net = tryParse(() => ipv4Cidr(r.dst));
    if (net && subnetsOverlap(subnet, net)) {
      throw new SubnetError(
        "subnet-in-use",
        `subnet ${text} overlaps the host's route to ${formatIpv4Subnet(net)}${r.dev ? ` (via ${r.dev})` : ""}: the switch would take that traffic; ${SUBNET_ADVICE}`,
      );
    }
  }
}

/**
 * The same for a switch's IPv6 /64 (as parseIpv6Prefix returns it): refused when it overlaps
 * RESERVED_IPV6 (the /64 ::/64 holds ::1), or one of the host's IPv6 addresses' prefixes or
 * main-table routes other than the default route. Throws SubnetError like checkSwitchSubnet.
 */
export function checkSwitchIpv6Prefix(prefix: string, host: HostNetworks): void {
  const p = ipv6Cidr(prefix);
  for (const r of RESERVED_IPV6) {
    if (ipv6Overlap(p, ipv6Cidr(r.cidr))) {
      throw new SubnetError("subnet-reserved", `IPv6 prefix ${prefix} overlaps ${r.cidr}, which is ${r.what}: a switch needs a global or unique local (fd00::/8) prefix`);
    }
  }
  for (const a of host.addresses) {
    if (a.family !== "inet6") continue;
    const net = tryParse(() => ipv6Cidr(`${a.local}/${a.prefixlen}`));
    if (net && ipv6Overlap(p, net)) {
      throw new SubnetError(
        "subnet-in-use",
        `IPv6 prefix ${prefix} overlaps the host's own network ${formatIpv6Cidr(net)} (address ${a.local}/${a.prefixlen} on ${a.dev}); ${PREFIX_ADVICE}`,
      );
    }
  }
  for (const r of host.routes) {
    if (r.dst === "default" || !r.dst.includes(":")) continue;
    const net = tryParse(() => ipv6Cidr(r.dst));
    if (net && ipv6Overlap(p, net)) {
      throw new SubnetError("subnet-in-use", `IPv6 prefix ${prefix} overlaps the host's route to ${formatIpv6Cidr(net)}${r.dev ? ` (via ${r.dev})` : ""}; ${PREFIX_ADVICE}`);
    }
  }
}

function formatIpv6Cidr(c: Ipv6Cidr): string {
  const groups = Array.from({ length: 8 }, (_, i) => Number((c.bits >> BigInt(112 - 16 * i)) & 0xffffn));
  return `${formatIpv6(groups)}/${c.prefixLength}`;
}
