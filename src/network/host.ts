// The host side of switches: `ip`, `nft` and sysctls, always with argv arrays. Everything here
// acts on the network namespace vmhost runs in (a test runs vmhostd inside its own namespace).
import { readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { z } from "zod";
import { CommandError, run } from "../images/appliance/run.js";
import { VmhostError } from "../util/errors.js";
import type { HostAddress, HostNetworks, HostRoute } from "./addr.js";

const CAP_NET_ADMIN = 12;

/** Bridges, taps, namespaces and firewall rules need CAP_NET_ADMIN (root, in practice). */
export function hasNetAdmin(): boolean {
  try {
    const status = readFileSync("/proc/self/status", "utf8");
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
    return !!m && (BigInt(`0x${m[1]}`) & (1n << BigInt(CAP_NET_ADMIN))) !== 0n;
  } catch {
    return process.getuid?.() === 0;
  }
}

export function requireNetAdmin(what: string): void {
  if (hasNetAdmin()) return;
  throw new VmhostError(
    "needs-root",
    `${what} needs root: vmhost creates Linux bridges, taps and firewall rules for it, which takes CAP_NET_ADMIN. ` +
      `Run vmhost as root, or use the "Default Switch" (user-mode networking), which needs no privileges`,
    403,
  );
}

export async function ip(args: readonly string[], netns?: string): Promise<string> {
  const argv = netns ? ["-n", netns, ...args] : [...args];
  return (await run("ip", argv)).stdout;
}

/** `ip` that tolerates "does not exist" / "already exists" style failures the caller expects. */
export async function ipMaybe(args: readonly string[], netns?: string): Promise<boolean> {
  try {
    await ip(args, netns);
    return true;
  } catch (err) {
    if (err instanceof CommandError) return false;
    throw err;
  }
}

interface IpLink {
  ifname: string;
  master?: string;
  operstate?: string;
  flags?: string[];
  link_type?: string;
  linkinfo?: { info_kind?: string };
}

export async function links(netns?: string): Promise<IpLink[]> {
  const out = await ip(["-j", "-d", "link", "show"], netns);
  return out.trim() ? (JSON.parse(out) as IpLink[]) : [];
}

export async function link(name: string, netns?: string): Promise<IpLink | undefined> {
  try {
    const out = await ip(["-j", "-d", "link", "show", "dev", name], netns);
    return (JSON.parse(out) as IpLink[])[0];
  } catch (err) {
    if (err instanceof CommandError && /does not exist|Cannot find device/i.test(err.stderr)) return undefined;
    throw err;
  }
}

/** Global-scope addresses of an interface ("10.0.0.5/24"). */
export async function hostAddresses(dev: string): Promise<string[]> {
  const out = await ip(["-j", "addr", "show", "dev", dev]);
  const parsed = (out.trim() ? JSON.parse(out) : []) as { addr_info?: { local: string; prefixlen: number; scope: string }[] }[];
  return parsed.flatMap((l) => (l.addr_info ?? []).filter((a) => a.scope === "global").map((a) => `${a.local}/${a.prefixlen}`));
}

const IpRoutes = z.array(z.object({ dst: z.string(), dev: z.string().optional() }).passthrough());
const IpAddrs = z.array(
  z
    .object({
      ifname: z.string(),
      addr_info: z
        .array(z.object({ family: z.string().optional(), local: z.string().optional(), prefixlen: z.number().int().min(0).max(128).optional() }).passthrough())
        .optional(),
    })
    .passthrough(),
);

/**
 * The output of `ip -j -4 route show`, `ip -j -6 route show` and `ip -j addr show` as the host
 * facts checkSwitchSubnet/checkSwitchIpv6Prefix (./addr.ts) take. Empty output is an empty
 * list; output that is not ip's JSON throws (zod's error names the field).
 */
export function parseHostNetworks(routes4: string, routes6: string, addrs: string): HostNetworks {
  const json = (t: string): unknown => (t.trim() ? JSON.parse(t) : []);
  const routes: HostRoute[] = [...IpRoutes.parse(json(routes4)), ...IpRoutes.parse(json(routes6))].map((r) => (r.dev ? { dst: r.dst, dev: r.dev } : { dst: r.dst }));
  const addresses: HostAddress[] = IpAddrs.parse(json(addrs)).flatMap((l) =>
    (l.addr_info ?? []).flatMap((a) =>
      (a.family === "inet" || a.family === "inet6") && a.local !== undefined && a.prefixlen !== undefined ? [{ dev: l.ifname, family: a.family, local: a.local, prefixlen: a.prefixlen }] : [],
    ),
  );
  return { routes, addresses };
}

/**
 * This network namespace's routes (main table, IPv4 and IPv6) and addresses, read with
 * `ip -j -4 route show`, `ip -j -6 route show` and `ip -j addr show` (argv arrays, no root
 * needed). Throws CommandError when ip fails.
 */
export async function readHostNetworks(netns?: string): Promise<HostNetworks> {
  const out = await Promise.allSettled([ip(["-j", "-4", "route", "show"], netns), ip(["-j", "-6", "route", "show"], netns), ip(["-j", "addr", "show"], netns)]);
  // The first failure in this fixed order, not whichever ended first.
  const [r4, r6, a] = out.map((r) => {
    if (r.status === "rejected") throw r.reason;
    return r.value;
  });
  return parseHostNetworks(r4!, r6!, a!);
}

export async function netnsList(): Promise<string[]> {
  const out = await ip(["netns", "list"]);
  return out
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter(Boolean);
}

/** Apply an nft script atomically (one transaction), from stdin. */
export async function nft(script: string): Promise<void> {
  await run("nft", ["-f", "-"], { input: script });
}

export async function nftTables(): Promise<{ family: string; name: string }[]> {
  const out = (await run("nft", ["-j", "list", "tables"])).stdout;
  const doc = JSON.parse(out || "{}") as { nftables?: { table?: { family: string; name: string } }[] };
  return (doc.nftables ?? []).flatMap((x) => (x.table ? [{ family: x.table.family, name: x.table.name }] : []));
}

/** /proc/sys/net is per network namespace: this sets it for the namespace vmhost runs in. */
export async function setSysctl(key: string, value: string): Promise<void> {
  const path = `/proc/sys/${key.replaceAll(".", "/")}`;
  const now = await readFile(path, "utf8").catch(() => undefined);
  if (now?.trim() === value) return;
  await writeFile(path, value);
}

export function netError(what: string, err: unknown): VmhostError {
  const msg = err instanceof CommandError ? err.message : (err as Error).message;
  return new VmhostError("network-failed", `${what}: ${msg}`, 500);
}
