// nftables rules of switches, one table per switch (named after it), so removing a switch is
// removing its tables. Rulesets are built as text by pure functions and applied in one transaction.
import { NAMES } from "./names.js";
import { nft, nftTables } from "./host.js";

export interface FirewallSpec {
  switchId: string;
  switchName: string;
  bridge: string;
  /** NAT: masquerade this IPv4 subnet when it leaves through anything but the bridge (or only `uplink`). */
  masquerade?: { subnet: string; uplink?: string };
  /** Private: drop everything the bridge would deliver to the host itself (bridged traffic between ports is untouched). */
  isolateHost?: boolean;
}

function quote(s: string): string {
  if (!/^[A-Za-z0-9 ._:/-]*$/.test(s)) throw new Error(`unsafe text for an nft rule: ${JSON.stringify(s)}`);
  return `"${s}"`;
}

/** The tables of one switch as `{family, script}`; an empty list when the switch needs none. */
export function firewallTables(spec: FirewallSpec): { family: "ip" | "netdev"; name: string; body: string }[] {
  const name = NAMES.nftTable(spec.switchId);
  const comment = `comment ${quote(`vmhost switch ${spec.switchName}`)}`;
  const out: { family: "ip" | "netdev"; name: string; body: string }[] = [];
  if (spec.masquerade) {
    const { subnet, uplink } = spec.masquerade;
    out.push({
      family: "ip",
      name,
      body: [
        `  chain postrouting {`,
        `    type nat hook postrouting priority srcnat; policy accept;`,
        `    ip saddr ${subnet} ip daddr != ${subnet} oifname != ${quote(spec.bridge)}${uplink ? ` oifname ${quote(uplink)}` : ""} masquerade ${comment}`,
        `  }`,
      ].join("\n"),
    });
  }
  if (spec.isolateHost) {
    // The ingress hook of the bridge device sees exactly the frames handed up to the host's stack
    // (ARP, IPv4, IPv6 alike); frames the bridge forwards between its ports never pass it.
    out.push({
      family: "netdev",
      name,
      body: [
        `  chain host_ingress {`,
        `    type filter hook ingress device ${quote(spec.bridge)} priority filter; policy drop;`,
        `  }`,
      ].join("\n"),
    });
  }
  return out;
}

/** One transaction: (re)create this switch's tables, dropping any stale copy first. */
export function firewallScript(spec: FirewallSpec): string {
  const tables = firewallTables(spec);
  const lines: string[] = [];
  for (const t of tables) {
    lines.push(`table ${t.family} ${t.name}`, `delete table ${t.family} ${t.name}`);
    lines.push(`table ${t.family} ${t.name} {`, t.body, `}`);
  }
  return lines.join("\n") + "\n";
}

export async function applyFirewall(spec: FirewallSpec): Promise<void> {
  const script = firewallScript(spec);
  if (script.trim()) await nft(script);
}

export async function removeFirewall(switchId: string): Promise<void> {
  const name = NAMES.nftTable(switchId);
  const mine = (await nftTables()).filter((t) => t.name === name);
  if (mine.length) await nft(mine.map((t) => `delete table ${t.family} ${t.name}`).join("\n") + "\n");
}

export async function firewallPresent(switchId: string): Promise<string[]> {
  const name = NAMES.nftTable(switchId);
  return (await nftTables()).filter((t) => t.name === name).map((t) => `${t.family} ${t.name}`);
}
