import { resolve } from "node:path";
import type { NetbootPayload } from "../images/netboot.js";
import type { SwitchView } from "../network/manager.js";
import type { ServiceClient } from "../service/client.js";
import type { VmView } from "../service/vms.js";
import { VmhostError } from "../util/errors.js";
import { args, enc, need, out } from "./args.js";
import { printTable } from "./format.js";

/** Virtual switches (New-VMSwitch & co.), Connect-VMNetworkAdapter, and network-boot payloads. */

export const NETWORK_USAGE = `Switches
  switch new NAME --type external|internal|private|nat [--adapter HOSTNIC] [--subnet CIDR]
             [--ipv6-prefix PREFIX/64] [--dhcp on|off] [--boot-dir DIR --boot-file FILE]
  switch list [--json]          switch show NAME [--json]          switch remove NAME
  nic connect VM ADAPTER SWITCH                 ("Default Switch" is built in; no root needed)
  netboot build DIR [--marker TEXT]             (shimx64.efi + grubx64.efi, bootx64.efi, boot.ipxe from the appliance)`;

function str(v: string | boolean | undefined): string | undefined {
  return typeof v === "string" ? v : undefined;
}

function printSwitch(s: SwitchView): void {
  console.log(`Name:        ${s.name}`);
  console.log(`Type:        ${s.type === "Default" ? "Default (built in)" : s.type}`);
  if (s.netAdapter) console.log(`Adapter:     ${s.netAdapter}`);
  if (s.subnet) console.log(`Subnet:      ${s.subnet}${s.hostAddress ? ` (host ${s.hostAddress})` : ""}`);
  if (s.ipv6Prefix) console.log(`IPv6:        ${s.ipv6Prefix}`);
  console.log(`DHCP:        ${s.dhcp ? "on" : "off"}`);
  if (s.boot) console.log(`Boot:        ${s.boot.file} from ${s.boot.dir}`);
  if (s.notes) console.log(`Notes:       ${s.notes}`);
  if (s.status) {
    console.log(`Bridge:      ${s.status.bridge} (${s.status.bridgePresent ? "present" : "missing: recreated when a VM starts"})`);
    if (s.dhcp) console.log(`dnsmasq:     ${s.status.dnsmasqPid ? `pid ${s.status.dnsmasqPid}` : "not running: started with the first VM"}`);
    if (s.status.firewall.length) console.log(`nftables:    ${s.status.firewall.join(", ")}`);
  }
  for (const a of s.adapters) console.log(`Connected:   ${a.vm} / ${a.adapter} (${a.macAddress})${a.running ? " running" : ""}`);
}

function onOff(v: string | boolean | undefined): boolean | undefined {
  if (v === undefined) return undefined;
  if (v === "on") return true;
  if (v === "off") return false;
  throw new VmhostError("usage", "--dhcp must be on or off");
}

export async function switchCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const [sub, ...r] = rest;
  switch (sub) {
    case "new": {
      const { values: v, positionals: p } = args(r, {
        type: { type: "string" },
        adapter: { type: "string" },
        subnet: { type: "string" },
        "ipv6-prefix": { type: "string" },
        dhcp: { type: "string" },
        "boot-dir": { type: "string" },
        "boot-file": { type: "string" },
      });
      const type = str(v["type"])?.toLowerCase();
      if (type !== "external" && type !== "internal" && type !== "private" && type !== "nat") {
        throw new VmhostError("usage", "switch new NAME --type external|internal|private|nat");
      }
      const sw = await api.call<SwitchView>("POST", "/v1/switches", {
        name: need(p, 0, "switch name"),
        type,
        netAdapter: str(v["adapter"]),
        subnet: str(v["subnet"]),
        ipv6Prefix: str(v["ipv6-prefix"]),
        dhcp: onOff(v["dhcp"]),
        bootDir: str(v["boot-dir"]),
        bootFile: str(v["boot-file"]),
      });
      out(!!v["json"], sw, () => console.log(`Created ${sw.type} switch "${sw.name}" (bridge ${sw.status?.bridge ?? "?"}).`));
      return 0;
    }
    case "list": {
      const { values: v } = args(r);
      const list = await api.call<SwitchView[]>("GET", "/v1/switches");
      out(!!v["json"], list, () =>
        printTable(
          ["Name", "Type", "Subnet", "DHCP", "Adapters"],
          list.map((s) => [s.name, s.type, s.subnet ?? (s.netAdapter ? `(${s.netAdapter})` : ""), s.dhcp ? "on" : "off", String(s.adapters.length)]),
        ),
      );
      return 0;
    }
    case "show": {
      const { values: v, positionals: p } = args(r);
      const sw = await api.call<SwitchView>("GET", `/v1/switches/${enc(need(p, 0, "switch name"))}`);
      out(!!v["json"], sw, () => printSwitch(sw));
      return 0;
    }
    case "remove": {
      const { values: v, positionals: p } = args(r);
      const res = await api.call<{ removed: string; disconnected: { vm: string; adapter: string }[] }>("DELETE", `/v1/switches/${enc(need(p, 0, "switch name"))}`);
      out(!!v["json"], res, () => {
        console.log(`Removed switch "${res.removed}".`);
        for (const d of res.disconnected) console.log(`  ${d.vm} / ${d.adapter} is not connected now`);
      });
      return 0;
    }
    default:
      throw new VmhostError("usage", "switch new|list|show|remove");
  }
}

export async function nicConnectCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const { values: v, positionals: p } = args(rest);
  const vm = await api.call<VmView>("POST", `/v1/vms/${enc(need(p, 0, "VM name"))}/nics/connect`, {
    adapter: need(p, 1, "adapter name"),
    switchName: need(p, 2, "switch name"),
  });
  out(!!v["json"], vm, () => printTable(["Adapter", "Type", "MAC", "Switch"], vm.nics.map((n) => [n.name, n.type, n.macAddress, n.switchName])));
  return 0;
}

export async function netbootCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const [sub, ...r] = rest;
  if (sub !== "build") throw new VmhostError("usage", "netboot build DIR [--marker TEXT]");
  const { values: v, positionals: p } = args(r, { marker: { type: "string" } });
  const res = await api.call<NetbootPayload>("POST", "/v1/netboot/payload", { dir: resolve(need(p, 0, "directory")), marker: str(v["marker"]) });
  out(!!v["json"], res, () => {
    console.log(`Network-boot payload "${res.marker}" in ${res.dir}:`);
    for (const f of res.files) console.log(`  ${f}`);
    console.log(
      `Use it with: vmhost switch new NAME --type internal --dhcp on --boot-dir ${res.dir} --boot-file shimx64.efi ` +
        "(Gen2, Secure Boot on), bootx64.efi (Gen2, Secure Boot off) or boot.ipxe (Gen1)",
    );
  });
  return 0;
}
