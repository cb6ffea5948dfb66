import { createHash } from "node:crypto";

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
