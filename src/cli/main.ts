import { ServiceClient } from "../service/client.js";
import type { ListEntry, VmView } from "../service/vms.js";
import { VmhostError } from "../util/errors.js";
import { parseSize } from "../util/size.js";
import { args, enc, int, need, out } from "./args.js";
import { attachConsole } from "./console.js";
import { runDemo } from "./demo.js";
import { printTable, printVm, printHost } from "./format.js";
import { GUEST_USAGE, followEvents, guestCommand } from "./guest-commands.js";
import { FIRMWARE_USAGE, firmwareCommand } from "./firmware.js";
import { serviceCommand } from "./service.js";
import { CHECKPOINT_USAGE, checkpointCommand } from "./checkpoint-commands.js";
import { NETWORK_USAGE, netbootCommand, nicConnectCommand, switchCommand } from "./network-commands.js";
import { TRAVEL_USAGE, convertGenerationCommand, exportCommand, importCommand } from "./travel-commands.js";
import { VHD_USAGE, vhdCommand } from "./vhd-commands.js";

const USAGE = `vmhost: Hyper-V-style virtual machines on QEMU

VMs
  new NAME --generation 1|2 [--cpus N] [--memory SIZE] [--disk PATH [--disk-format F] | --new-disk SIZE[:vhdx|vhd|qcow2|raw]]
           [--dvd ISO] [--appliance] [--notes TEXT]       (names: up to 100 characters, spaces allowed)
  list [--json]                 show NAME [--json]
  start NAME                    stop NAME [--force] [--timeout SECONDS]
  turn-off NAME                 pause NAME          resume NAME
  save NAME                     restart NAME        remove NAME [--delete-disks]
  rename NAME NEWNAME
  set NAME [--cpus N] [--memory SIZE] [--notes TEXT] [--checkpoint-type Disabled|Production|ProductionOnly|Standard] [--display on|off]
  disk add NAME (PATH [--format vhdx|vhd|qcow2|raw] | --new SIZE[:FORMAT]) [--controller-type SCSI|IDE] [--controller N] [--location N]
  disk remove NAME (PATH | "SCSI 0:1")
  dvd set NAME ISO [--drive "IDE 1:0"]        dvd eject NAME [--drive REF]
  floppy set NAME VFD           floppy eject NAME   (generation 1 only)
  nic add NAME [--legacy] [--name NAME] [--mac MAC] [--switch SWITCH]
  nic remove NAME ADAPTER
  console NAME [--log]          events NAME [--json] [--follow]

${CHECKPOINT_USAGE}

${TRAVEL_USAGE}

${VHD_USAGE}

${FIRMWARE_USAGE}

${GUEST_USAGE}

${NETWORK_USAGE}

Host
  host [--json] [--probe]       appliance build [--force]
  service start|stop|status     demo [--keep-running]

Everything lives under $VMHOST_HOME (default /var/lib/vmhost for root).`;

/** Memory: a bare number means MiB (as Hyper-V Manager shows it); units are binary. */
function memoryMiB(v: string | boolean | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw new VmhostError("usage", "--memory needs a size, e.g. 512M or 2G");
  if (/^\d+$/.test(v)) return Number(v);
  let bytes: number;
  try {
    bytes = parseSize(v);
  } catch (err) {
    throw new VmhostError("usage", `--memory: ${(err as Error).message}`);
  }
  if (bytes % (1024 * 1024) !== 0) throw new VmhostError("usage", `--memory ${v} is not a whole number of MiB`);
  return bytes / (1024 * 1024);
}

type Format = "vhdx" | "vhd" | "qcow2" | "raw";

function diskFormat(v: string | boolean | undefined, what: string): Format | undefined {
  if (v === undefined) return undefined;
  if (v !== "vhdx" && v !== "vhd" && v !== "qcow2" && v !== "raw") throw new VmhostError("usage", `${what} must be vhdx, vhd, qcow2 or raw (got ${JSON.stringify(v)})`);
  return v;
}

function newDiskSpec(v: string): { sizeBytes: number; format: Format } {
  const [size = "", fmt = "vhdx"] = v.split(":");
  const format = diskFormat(fmt, "the new disk's format")!;
  try {
    return { sizeBytes: parseSize(size), format };
  } catch (err) {
    throw new VmhostError("usage", `new disk size: ${(err as Error).message}`);
  }
}

function onOff(v: string | boolean | undefined, what: string): boolean {
  if (v === "on" || v === "true") return true;
  if (v === "off" || v === "false") return false;
  throw new VmhostError("usage", `${what} must be on or off`);
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  const api = new ServiceClient();
  switch (cmd) {
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE + "\n");
      return cmd === undefined ? 2 : 0;

    case "new": {
      const { values: v, positionals: p } = args(rest, {
        generation: { type: "string", short: "g" },
        cpus: { type: "string" },
        memory: { type: "string" },
        disk: { type: "string" },
        "disk-format": { type: "string" },
        "new-disk": { type: "string" },
        dvd: { type: "string" },
        appliance: { type: "boolean" },
        notes: { type: "string" },
      });
      const name = need(p, 0, "VM name");
      const generation = v["generation"] === undefined ? 2 : Number(v["generation"]);
      if (generation !== 1 && generation !== 2) throw new VmhostError("usage", "--generation must be 1 or 2");
      if (v["disk"] && v["new-disk"]) throw new VmhostError("usage", "give --disk or --new-disk, not both");
      const vm = await api.call<VmView>("POST", "/v1/vms", {
        name,
        generation,
        processorCount: int(v["cpus"], "--cpus"),
        memoryMiB: memoryMiB(v["memory"]),
        disk: v["disk"] as string | undefined,
        diskFormat: diskFormat(v["disk-format"], "--disk-format"),
        newDisk: typeof v["new-disk"] === "string" ? newDiskSpec(v["new-disk"]) : undefined,
        dvd: v["dvd"] as string | undefined,
        appliance: v["appliance"] === true ? true : undefined,
        notes: v["notes"] as string | undefined,
      });
      out(!!v["json"], vm, () => console.log(`Created generation ${vm.generation} VM "${vm.name}" (${vm.id}).`));
      return 0;
    }

    case "list": {
      const { values: v } = args(rest, {});
      const vms = await api.call<ListEntry[]>("GET", "/v1/vms");
      out(!!v["json"], vms, () =>
        printTable(
          ["Name", "State", "CPUs", "Memory", "Generation", "Heartbeat"],
          vms.map((x) => [
            x.name,
            x.state,
            String(x.cpus ?? ""),
            x.memoryMiB ? `${x.memoryMiB} MiB` : "",
            x.generation ? String(x.generation) : x.error ?? "",
            x.heartbeat === "disabled" ? "(disabled)" : x.heartbeat ?? "",
          ]),
        ),
      );
      return 0;
    }

    case "show": {
      const { values: v, positionals: p } = args(rest, {});
      const vm = await api.call<VmView>("GET", `/v1/vms/${enc(need(p, 0, "VM name"))}`);
      out(!!v["json"], vm, () => printVm(vm));
      return 0;
    }

    case "start":
    case "turn-off":
    case "pause":
    case "resume":
    case "save":
    case "restart": {
      const { values: v, positionals: p } = args(rest, {});
      const name = need(p, 0, "VM name");
      const r = await api.call<{ state: string }>("POST", `/v1/vms/${enc(name)}/${cmd}`);
      out(!!v["json"], r, () => console.log(`${name}: ${r.state}`));
      return 0;
    }

    case "stop": {
      const { values: v, positionals: p } = args(rest, { force: { type: "boolean" }, timeout: { type: "string" } });
      const name = need(p, 0, "VM name");
      const r = await api.call<{ state: string; forced: boolean }>("POST", `/v1/vms/${enc(name)}/stop`, {
        force: v["force"] === true,
        timeoutSeconds: int(v["timeout"], "--timeout"),
      });
      out(!!v["json"], r, () => console.log(`${name}: ${r.state}${r.forced ? " (turned off after the guest did not shut down)" : ""}`));
      return 0;
    }

    case "remove": {
      const { values: v, positionals: p } = args(rest, { "delete-disks": { type: "boolean" } });
      const name = need(p, 0, "VM name");
      const r = await api.call<{ deletedDisks: string[]; keptDisks: string[] }>("DELETE", `/v1/vms/${enc(name)}`, {
        deleteDisks: v["delete-disks"] === true,
      });
      out(!!v["json"], r, () => {
        console.log(`Removed VM "${name}".`);
        for (const d of r.keptDisks) console.log(`  kept disk ${d}`);
        for (const d of r.deletedDisks) console.log(`  deleted disk ${d}`);
      });
      return 0;
    }

    case "rename": {
      const { values: v, positionals: p } = args(rest, {});
      const name = need(p, 0, "VM name");
      const vm = await api.call<VmView>("POST", `/v1/vms/${enc(name)}/rename`, { name: need(p, 1, "new name") });
      out(!!v["json"], vm, () => console.log(`Renamed "${name}" to "${vm.name}" (${vm.id}).`));
      return 0;
    }

    case "set": {
      const { values: v, positionals: p } = args(rest, {
        cpus: { type: "string" },
        memory: { type: "string" },
        notes: { type: "string" },
        "checkpoint-type": { type: "string" },
        display: { type: "string" },
      });
      const name = need(p, 0, "VM name");
      const ct = v["checkpoint-type"];
      if (ct !== undefined && !["Disabled", "Production", "ProductionOnly", "Standard"].includes(String(ct))) {
        throw new VmhostError("usage", "--checkpoint-type must be Disabled, Production, ProductionOnly or Standard");
      }
      const display = v["display"] === undefined ? undefined : onOff(v["display"], "--display");
      const body = {
        processorCount: int(v["cpus"], "--cpus"),
        memoryMiB: memoryMiB(v["memory"]),
        notes: v["notes"] as string | undefined,
        checkpointType: ct as string | undefined,
        display,
      };
      if (Object.values(body).every((x) => x === undefined)) throw new VmhostError("usage", "set needs --cpus, --memory, --notes, --checkpoint-type or --display");
      const vm = await api.call<VmView>("PATCH", `/v1/vms/${enc(name)}`, body);
      out(!!v["json"], vm, () => console.log(`${name}: ${vm.cpus} CPU(s), ${vm.memoryMiB} MiB`));
      return 0;
    }

    case "disk": {
      const [sub, ...r2] = rest;
      if (sub === "add") {
        const { values: v, positionals: p } = args(r2, {
          new: { type: "string" },
          format: { type: "string" },
          "controller-type": { type: "string" },
          controller: { type: "string" },
          location: { type: "string" },
        });
        const name = need(p, 0, "VM name");
        const ct = typeof v["controller-type"] === "string" ? v["controller-type"].toUpperCase() : undefined;
        if (ct !== undefined && ct !== "IDE" && ct !== "SCSI") throw new VmhostError("usage", "--controller-type must be IDE or SCSI");
        if (!p[1] && !v["new"]) throw new VmhostError("usage", "disk add needs a disk PATH or --new SIZE");
        const vm = await api.call<VmView>("POST", `/v1/vms/${enc(name)}/disks`, {
          path: p[1],
          format: diskFormat(v["format"], "--format"),
          newDisk: typeof v["new"] === "string" ? newDiskSpec(v["new"]) : undefined,
          controllerType: ct,
          controllerNumber: int(v["controller"], "--controller"),
          controllerLocation: int(v["location"], "--location"),
        });
        out(!!v["json"], vm, () => printTable(["Location", "Disk", "Format"], vm.disks.map((d) => [d.ref, d.path, d.format])));
        return 0;
      }
      if (sub === "remove") {
        const { values: v, positionals: p } = args(r2, {});
        const vm = await api.call<VmView>("POST", `/v1/vms/${enc(need(p, 0, "VM name"))}/disks/remove`, { ref: need(p, 1, "disk path or location") });
        out(!!v["json"], vm, () => printTable(["Location", "Disk", "Format"], vm.disks.map((d) => [d.ref, d.path, d.format])));
        return 0;
      }
      throw new VmhostError("usage", "disk add|remove");
    }

    case "dvd": {
      const [sub, ...r2] = rest;
      const { values: v, positionals: p } = args(r2, { drive: { type: "string" } });
      const name = need(p, 0, "VM name");
      if (sub !== "set" && sub !== "eject") throw new VmhostError("usage", "dvd set|eject");
      const vm = await api.call<VmView>("POST", `/v1/vms/${enc(name)}/dvd`, {
        path: sub === "set" ? need(p, 1, "ISO path") : null,
        ref: v["drive"] as string | undefined,
      });
      out(!!v["json"], vm, () => printTable(["Location", "Media"], vm.dvds.map((d) => [d.ref, d.path ?? "(empty)"])));
      return 0;
    }

    case "floppy": {
      const [sub, ...r2] = rest;
      const { values: v, positionals: p } = args(r2, {});
      const name = need(p, 0, "VM name");
      if (sub !== "set" && sub !== "eject") throw new VmhostError("usage", "floppy set|eject");
      const vm = await api.call<VmView>("POST", `/v1/vms/${enc(name)}/floppy`, { path: sub === "set" ? need(p, 1, "floppy image path") : null });
      out(!!v["json"], vm, () => console.log(`${name}: floppy ${vm.floppy ?? "(empty)"}`));
      return 0;
    }

    case "nic": {
      const [sub, ...r2] = rest;
      if (sub === "add") {
        const { values: v, positionals: p } = args(r2, { legacy: { type: "boolean" }, name: { type: "string" }, mac: { type: "string" }, switch: { type: "string" } });
        const vm = await api.call<VmView>("POST", `/v1/vms/${enc(need(p, 0, "VM name"))}/nics`, {
          legacy: v["legacy"] === true,
          name: v["name"] as string | undefined,
          mac: v["mac"] as string | undefined,
          switchName: v["switch"] as string | undefined,
        });
        out(!!v["json"], vm, () => printTable(["Adapter", "Type", "MAC", "Switch"], vm.nics.map((n) => [n.name, n.type, n.macAddress, n.switchName])));
        return 0;
      }
      if (sub === "remove") {
        const { values: v, positionals: p } = args(r2, {});
        const vm = await api.call<VmView>("POST", `/v1/vms/${enc(need(p, 0, "VM name"))}/nics/remove`, { ref: need(p, 1, "adapter name") });
        out(!!v["json"], vm, () => printTable(["Adapter", "Type", "MAC", "Switch"], vm.nics.map((n) => [n.name, n.type, n.macAddress, n.switchName])));
        return 0;
      }
      if (sub === "connect") return nicConnectCommand(api, r2);
      throw new VmhostError("usage", "nic add|remove|connect");
    }

    case "console": {
      const { values: v, positionals: p } = args(rest, { log: { type: "boolean" } });
      const name = need(p, 0, "VM name");
      if (v["log"]) {
        const r = await api.call<{ log: string }>("GET", `/v1/vms/${enc(name)}/console`);
        process.stdout.write(r.log);
        return 0;
      }
      const r = await api.call<{ socket: string }>("GET", `/v1/vms/${enc(name)}/console/socket`);
      return attachConsole(name, r.socket);
    }

    case "events": {
      const { values: v, positionals: p } = args(rest, { follow: { type: "boolean" } });
      if (v["follow"]) return followEvents(api, need(p, 0, "VM name"), !!v["json"]);
      const evs = await api.call<{ at: string; type: string; message: string }[]>("GET", `/v1/vms/${enc(need(p, 0, "VM name"))}/events`);
      out(!!v["json"], evs, () => {
        for (const e of evs) console.log(`${e.at}  ${e.type.padEnd(20)} ${e.message}`);
      });
      return 0;
    }

    case "host": {
      const { values: v } = args(rest, { probe: { type: "boolean" } });
      if (v["probe"]) await api.call("POST", "/v1/host/accelerator/probe");
      const h = await api.call<Record<string, unknown>>("GET", "/v1/host");
      out(!!v["json"], h, () => printHost(h));
      return 0;
    }

    case "appliance": {
      const [sub, ...r2] = rest;
      if (sub !== "build") throw new VmhostError("usage", "appliance build [--force]");
      const { values: v } = args(r2, { force: { type: "boolean" } });
      const r = await api.call<{ dir: string; manifest: { id: string; kernel: { package: string; version: string } } }>("POST", "/v1/appliance/build", {
        force: v["force"] === true,
      });
      out(!!v["json"], r, () => console.log(`Appliance ${r.manifest.id} in ${r.dir} (kernel ${r.manifest.kernel.package} ${r.manifest.kernel.version})`));
      return 0;
    }

    case "service":
      return serviceCommand(api, rest);

    case "firmware":
      return firmwareCommand(api, rest);

    case "checkpoint":
      return checkpointCommand(api, rest);

    case "export":
      return exportCommand(api, rest);

    case "import":
      return importCommand(api, rest);

    case "convert-generation":
      return convertGenerationCommand(api, rest);

    case "vhd":
      return vhdCommand(api, rest);

    case "switch":
      return switchCommand(api, rest);

    case "netboot":
      return netbootCommand(api, rest);

    case "integration":
    case "kvp":
    case "copy-file":
    case "vss":
      return guestCommand(api, cmd, rest);

    case "demo": {
      const { values: v } = args(rest, { "keep-running": { type: "boolean" } });
      return runDemo(api, { keepRunning: v["keep-running"] === true });
    }

    default:
      throw new VmhostError("usage", `unknown command "${cmd}"; run "vmhost help"`);
  }
}

export async function run(): Promise<void> {
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (err) {
    const e = err as Error & { code?: string };
    const rule = e.code?.startsWith("rule:") ? ` (rule ${e.code.slice(5)})` : "";
    process.stderr.write(`vmhost: ${e.message}${rule}\n`);
    process.exitCode = e.code === "usage" ? 2 : 1;
  }
}
