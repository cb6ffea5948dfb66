import { resolve } from "node:path";
import { Command, Option } from "commander";
import type { SwitchView } from "../api/views.js";
import { VmhostError } from "../util/errors.js";
import { out } from "./args.js";
import { changeCommand, readCommand, type CliContext } from "./context.js";
import { printTable } from "./format.js";

/** Virtual switches (New-VMSwitch & co.) and network-boot payloads. */

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

function onOff(v: string | undefined): boolean | undefined {
  if (v === undefined) return undefined;
  if (v === "on") return true;
  if (v === "off") return false;
  throw new VmhostError("usage", "--dhcp must be on or off");
}

export function networkCommands(program: Command, ctx: CliContext): void {
  const sw = program.command("switch").description("virtual switches (New/Get/Remove-VMSwitch); \"Default Switch\" is built in");
  changeCommand(sw, "new", "create a switch (needs root, except the built-in Default Switch)")
    .argument("<name>", "switch name")
    .addOption(new Option("--type <type>", "external, internal, private or nat").choices(["external", "internal", "private", "nat"]).makeOptionMandatory())
    .option("--adapter <hostnic>", "the host NIC (external; nat uplink)")
    .option("--subnet <cidr>", "IPv4 subnet (internal, nat)")
    .option("--ipv6-prefix <prefix>", "IPv6 /64 prefix")
    .option("--dhcp <on|off>", "run DHCP (and router advertisements, TFTP)")
    .option("--boot-dir <dir>", "TFTP folder for network boot")
    .option("--boot-file <file>", "the boot file DHCP names")
    .action(async (name: string, o: { type: "external" | "internal" | "private" | "nat"; adapter?: string; subnet?: string; ipv6Prefix?: string; dhcp?: string; bootDir?: string; bootFile?: string; json?: boolean }) => {
      const s = await (await ctx.conn()).api.switches.create({
        name,
        type: o.type,
        netAdapter: o.adapter,
        subnet: o.subnet,
        ipv6Prefix: o.ipv6Prefix,
        dhcp: onOff(o.dhcp),
        bootDir: o.bootDir,
        bootFile: o.bootFile,
      });
      out(o.json, s, () => console.log(`Created ${s.type} switch "${s.name}" (bridge ${s.status?.bridge ?? "?"}).`));
    });
  readCommand(sw, "list", "the switches").action(async (o: { json?: boolean }) => {
    const list = await (await ctx.conn()).api.switches.list();
    out(o.json, list, () =>
      printTable(
        ["Name", "Type", "Subnet", "DHCP", "Adapters"],
        list.map((s) => [s.name, s.type, s.subnet ?? (s.netAdapter ? `(${s.netAdapter})` : ""), s.dhcp ? "on" : "off", String(s.adapters.length)]),
      ),
    );
  });
  readCommand(sw, "show", "one switch")
    .argument("<switch>", "switch name")
    .action(async (name: string, o: { json?: boolean }) => {
      const s = await (await ctx.conn()).api.switches.get({ name });
      out(o.json, s, () => printSwitch(s));
    });
  changeCommand(sw, "remove", "remove a switch (its adapters are disconnected)")
    .argument("<switch>", "switch name")
    .action(async (name: string, o: { json?: boolean }) => {
      const res = await (await ctx.conn()).api.switches.remove({ name });
      out(o.json, res, () => {
        console.log(`Removed switch "${res.removed}".`);
        for (const d of res.disconnected) console.log(`  ${d.vm} / ${d.adapter} is not connected now`);
      });
    });

  const netboot = program.command("netboot").description("network-boot payloads from the appliance");
  changeCommand(netboot, "build", "shimx64.efi + grubx64.efi, bootx64.efi, boot.ipxe into a folder")
    .argument("<dir>", "the folder")
    .option("--marker <text>", "what the payload prints when it runs")
    .action(async (dir: string, o: { marker?: string; json?: boolean }) => {
      const res = await (await ctx.conn()).api.host.buildNetboot({ dir: resolve(dir), marker: o.marker });
      out(o.json, res, () => {
        console.log(`Network-boot payload "${res.marker}" in ${res.dir}:`);
        for (const f of res.files) console.log(`  ${f}`);
        console.log(
          `Use it with: vmhost switch new NAME --type internal --dhcp on --boot-dir ${res.dir} --boot-file shimx64.efi ` +
            "(Gen2, Secure Boot on), bootx64.efi (Gen2, Secure Boot off) or boot.ipxe (Gen1)",
        );
      });
    });
}
