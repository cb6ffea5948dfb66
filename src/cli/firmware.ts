import type { ServiceClient } from "../service/client.js";
import type { FirmwareSetResult, FirmwareView } from "../service/firmware.js";
import { VmhostError } from "../util/errors.js";
import { args, enc, need, out } from "./args.js";
import { printTable } from "./format.js";

export const FIRMWARE_USAGE = `Firmware (Get-VMFirmware / Set-VMFirmware)
  firmware get NAME [--json]
  firmware set NAME [--first-boot-device DEVICE|Boot####] [--boot-order ID,ID,... [--prune [--prune-files]]]
           [--preferred-network-boot-protocol ipv4|ipv6] [--pause-after-boot-failure on|off]
           [--secure-boot on|off] [--secure-boot-template MicrosoftWindows|MicrosoftUEFICertificateAuthority|OpenSourceShieldedVM]
           [--network-boot-dir DIR --network-boot-file FILE | --no-network-boot]      (generation 2)
  firmware set NAME --startup-order CD,IDE,LegacyNetworkAdapter,Floppy                  (generation 1)
  firmware reset NAME       a new NVRAM from the template (boot entries an OS made are lost; VM off)
  DEVICE is an adapter name or MAC, a drive location like "SCSI 0:1", or a disk path.`;

function onOff(v: string | undefined, what: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (/^(on|true|yes|1)$/i.test(v)) return true;
  if (/^(off|false|no|0)$/i.test(v)) return false;
  throw new VmhostError("usage", `${what} must be on or off (got "${v}")`);
}

function list(v: string | undefined): string[] | undefined {
  return v === undefined ? undefined : v.split(",").map((x) => x.trim()).filter((x) => x.length > 0);
}

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

export async function firmwareCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const [sub, ...r2] = rest;
  const { values: v, positionals: p } = args(r2, {
    "first-boot-device": { type: "string" },
    "boot-order": { type: "string" },
    prune: { type: "boolean" },
    "prune-files": { type: "boolean" },
    "preferred-network-boot-protocol": { type: "string" },
    "pause-after-boot-failure": { type: "string" },
    "secure-boot": { type: "string" },
    "secure-boot-template": { type: "string" },
    "startup-order": { type: "string" },
    "network-boot-dir": { type: "string" },
    "network-boot-file": { type: "string" },
    "no-network-boot": { type: "boolean" },
  });
  const str = (k: string): string | undefined => (typeof v[k] === "string" ? (v[k] as string) : undefined);
  const name = need(p, 0, "VM name");
  const path = `/v1/vms/${enc(name)}/firmware`;
  if (sub === "get") {
    const f = await api.call<FirmwareView>("GET", path);
    out(!!v["json"], f, () => printView(f));
    return 0;
  }
  if (sub === "reset") {
    const r = await api.call<FirmwareSetResult>("POST", `${path}/reset`);
    out(!!v["json"], r, () => {
      for (const m of r.messages) console.log(`${name}: ${m}`);
    });
    return 0;
  }
  if (sub !== "set") throw new VmhostError("usage", "firmware get|set|reset NAME ...");
  const proto = str("preferred-network-boot-protocol");
  if (proto !== undefined && !/^ipv[46]$/i.test(proto)) throw new VmhostError("usage", "--preferred-network-boot-protocol must be ipv4 or ipv6");
  if ((str("network-boot-dir") === undefined) !== (str("network-boot-file") === undefined)) {
    throw new VmhostError("usage", "--network-boot-dir and --network-boot-file go together");
  }
  const body = {
    firstBootDevice: str("first-boot-device"),
    bootOrder: list(str("boot-order")),
    prune: v["prune"] === true ? true : undefined,
    pruneFiles: v["prune-files"] === true ? true : undefined,
    preferredNetworkBootProtocol: proto === undefined ? undefined : proto.toLowerCase() === "ipv6" ? "IPv6" : "IPv4",
    pauseAfterBootFailure: onOff(str("pause-after-boot-failure"), "--pause-after-boot-failure"),
    secureBoot: onOff(str("secure-boot"), "--secure-boot"),
    secureBootTemplate: str("secure-boot-template"),
    startupOrder: list(str("startup-order")),
    networkBootPayload: v["no-network-boot"] ? null : str("network-boot-dir") ? { dir: str("network-boot-dir")!, file: str("network-boot-file")! } : undefined,
  };
  if (Object.values(body).every((x) => x === undefined)) throw new VmhostError("usage", "firmware set needs something to set; see vmhost help");
  const r = await api.call<FirmwareSetResult>("PATCH", path, body);
  out(!!v["json"], r, () => {
    for (const m of r.messages) console.log(`${name}: ${m}`);
    if (r.messages.length === 0) console.log(`${name}: nothing changed`);
  });
  return 0;
}
