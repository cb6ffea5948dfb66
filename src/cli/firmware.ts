import { Command, Option } from "commander";
import type { FirmwareView } from "../api/views.js";
import { VmhostError } from "../util/errors.js";
import { list, onOff, out } from "./args.js";
import { readCommand, changeCommand, type CliContext } from "./context.js";
import { printTable } from "./format.js";

/** Firmware (Get-VMFirmware / Set-VMFirmware). */

function printView(f: FirmwareView): void {
  if (f.generation === 1) {
    console.log(`${f.vm} (generation 1, ${f.state}): BIOS startup order ${f.startupOrder?.join(", ")}`);
  } else {
    console.log(`${f.vm} (generation 2, ${f.state})`);
    const mark = (e: NonNullable<FirmwareView["bootOrder"]>[number]): string =>
      e.status === "pending" ? "+" : e.status === "missing" ? "!" : e.status === "duplicate" ? "=" : e.pendingAction ? "~" : e.inBootOrder ? "" : "*";
    printTable(
      ["Id", "BootType", "Device", "Description", "FirmwarePath"],
      (f.bootOrder ?? []).map((e) => [
        e.id + mark(e) + (e.hidden ? " (hidden)" : ""),
        e.bootType,
        e.device ? `${e.device.type} ${e.device.ref}` : "",
        e.description,
        e.firmwarePath,
      ]),
    );
    const marks = new Set((f.bootOrder ?? []).map(mark));
    if (marks.has("*")) console.log("  * not in BootOrder");
    if (marks.has("!")) console.log("  ! BootOrder names it, but no such Boot#### exists");
    if (marks.has("=")) console.log("  = listed in BootOrder again");
    if (marks.has("+")) console.log("  + not stored yet: vmhost adds it before the next start");
    if (marks.has("~")) console.log("  ~ vmhost changes it before the next start");
    if (f.pendingBootOrder) console.log(`BootOrder after pending:      ${f.pendingBootOrder.join(",")}`);
    if (f.bootNext) console.log(`BootNext:                     ${f.bootNext}`);
    console.log(`PreferredNetworkBootProtocol: ${f.preferredNetworkBootProtocol}`);
    console.log(`SecureBoot:                   ${f.secureBoot} (template ${f.secureBootTemplate})`);
    console.log(`  in force:                   ${f.secureBootInForce}`);
    if (f.nvram) {
      console.log(`  NVRAM:                      SecureBoot ${f.nvram.secureBoot ? 1 : 0}, SetupMode ${f.nvram.setupMode ? 1 : 0}, db: ${f.nvram.db.join("; ") || "(none)"}`);
    }
    console.log(`PauseAfterBootFailure:        ${f.pauseAfterBootFailure ? "On" : "Off"}`);
    if (f.lastBootFailure) {
      const b = f.lastBootFailure;
      console.log(`  last failed boot:           ${b.at} ${b.entry} "${b.description}": ${b.reason}${b.paused ? " (paused)" : ""}`);
    }
    if (f.networkBootPayload) console.log(`Network boot payload:         ${f.networkBootPayload.dir} (${f.networkBootPayload.file}) on the Default Switch`);
  }
  if (f.pending.length) {
    console.log(`Pending${f.pendingReason ? ` (${f.pendingReason})` : ""}:`);
    for (const p of f.pending) console.log(`  ${p.at}  ${p.detail}`);
  } else console.log("Pending:                      none");
}

export function firmwareCommands(program: Command, ctx: CliContext): void {
  const fw = program.command("firmware").description("firmware: Gen2 boot entries and Secure Boot, Gen1 BIOS order (Get/Set-VMFirmware)");
  readCommand(fw, "get", "boot entries (Boot####, their type and device), Secure Boot, pending changes")
    .argument("<name>", "VM name or id")
    .action(async (name: string, o: { json?: boolean }) => {
      const f = await (await ctx.conn()).api.firmware.get({ vm: name });
      out(o.json, f, () => printView(f));
    });
  changeCommand(fw, "reset", "a new NVRAM from the template (boot entries an OS made are lost; VM off)")
    .argument("<name>", "VM name or id")
    .action(async (name: string, o: { json?: boolean }) => {
      const r = await (await ctx.conn()).api.firmware.reset({ vm: name });
      out(o.json, r, () => {
        for (const m of r.messages) console.log(`${name}: ${m}`);
      });
    });
  changeCommand(fw, "set", "change the boot order, Secure Boot, network boot, BIOS startup order")
    .argument("<name>", "VM name or id")
    .option("--first-boot-device <device>", 'an adapter name or MAC, a drive location like "SCSI 0:1", a disk path, or Boot####')
    .option("--boot-order <ids>", "Boot#### ids or devices, comma separated; the rest move to the end")
    .option("--prune", "delete the entries not named in --boot-order")
    .option("--prune-files", "also delete File entries (made by an OS installer)")
    .addOption(new Option("--preferred-network-boot-protocol <p>", "IPv4 or IPv6").choices(["ipv4", "ipv6", "IPv4", "IPv6"]))
    .option("--pause-after-boot-failure <on|off>", "pause the VM when a boot entry fails")
    .option("--secure-boot <on|off>", "Secure Boot (generation 2)")
    .addOption(new Option("--secure-boot-template <t>", "Secure Boot template").choices(["MicrosoftWindows", "MicrosoftUEFICertificateAuthority", "OpenSourceShieldedVM"]))
    .option("--startup-order <devices>", "generation 1: CD,IDE,LegacyNetworkAdapter,Floppy")
    .option("--network-boot-dir <dir>", "a folder the Default Switch serves over TFTP")
    .option("--network-boot-file <file>", "the boot file DHCP names")
    .option("--no-network-boot", "stop serving a network-boot payload")
    .action(async (name: string, o: Record<string, string | boolean | undefined>) => {
      const str = (k: string): string | undefined => (typeof o[k] === "string" ? (o[k] as string) : undefined);
      if ((str("networkBootDir") === undefined) !== (str("networkBootFile") === undefined)) {
        throw new VmhostError("usage", "--network-boot-dir and --network-boot-file go together");
      }
      const proto = str("preferredNetworkBootProtocol");
      const body = {
        firstBootDevice: str("firstBootDevice"),
        bootOrder: list(str("bootOrder")),
        prune: o["prune"] === true ? true : undefined,
        pruneFiles: o["pruneFiles"] === true ? true : undefined,
        preferredNetworkBootProtocol: proto === undefined ? undefined : proto.toLowerCase() === "ipv6" ? ("IPv6" as const) : ("IPv4" as const),
        pauseAfterBootFailure: onOff(str("pauseAfterBootFailure"), "--pause-after-boot-failure"),
        secureBoot: onOff(str("secureBoot"), "--secure-boot"),
        secureBootTemplate: str("secureBootTemplate") as "MicrosoftWindows" | undefined,
        startupOrder: list(str("startupOrder")) as ("CD" | "IDE" | "LegacyNetworkAdapter" | "Floppy")[] | undefined,
        // commander's --no-network-boot sets networkBoot to false (true by default).
        networkBootPayload: o["networkBoot"] === false ? null : str("networkBootDir") ? { dir: str("networkBootDir")!, file: str("networkBootFile")! } : undefined,
      };
      if (Object.values(body).every((x) => x === undefined)) throw new VmhostError("usage", "firmware set needs something to set; see vmhost help firmware");
      const r = await (await ctx.conn()).api.firmware.set({ vm: name, ...body });
      out(o["json"] === true, r, () => {
        for (const m of r.messages) console.log(`${name}: ${m}`);
        if (r.messages.length === 0) console.log(`${name}: nothing changed`);
      });
    });
}
