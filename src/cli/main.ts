import { Command, CommanderError, Option } from "commander";
import { ApiError } from "../../packages/sdk/src/index.js";
import { VmhostError } from "../util/errors.js";
import { accessCommands } from "./access-commands.js";
import { diskFormat, int, memoryMiB, newDiskSpec, onOff, out } from "./args.js";
import { completionCommands } from "./completion.js";
import { attachConsole } from "./console.js";
import { Connection } from "./connection.js";
import { changeCommand, readCommand, type CliContext } from "./context.js";
import { runDemo } from "./demo.js";
import { checkpointCommands } from "./checkpoint-commands.js";
import { firmwareCommands } from "./firmware.js";
import { printHost, printTable, printVm } from "./format.js";
import { followEvents, guestCommands } from "./guest-commands.js";
import { networkCommands } from "./network-commands.js";
import { serviceCommands } from "./service.js";
import { travelCommands } from "./travel-commands.js";
import { vhdCommands } from "./vhd-commands.js";
import { hostsCommands } from "./hosts-commands.js";

/**
 * The `vmhost` command line, on commander (the most used Node CLI library, kept and typed: nested
 * subcommands, `help CMD` and `CMD --help`, "did you mean" for a mistyped command or option, and
 * a command tree the completion engine walks). Every command is a thin client of the API through
 * the SDK, locally over the unix socket (vmhostd starts on demand) or with `--remote NAME` /
 * VMHOST_REMOTE over HTTPS.
 */
export function buildProgram(ctx: CliContext): Command {
  const program = new Command("vmhost")
    .description("Hyper-V-style virtual machines on QEMU. Everything lives under $VMHOST_HOME (default /var/lib/vmhost for root).")
    .addOption(new Option("--remote <name>", "run the command on a trusted remote host (vmhost remote add)").env("VMHOST_REMOTE"))
    .exitOverride()
    .showSuggestionAfterError(true)
    .showHelpAfterError('(run "vmhost help" for the commands, "vmhost help COMMAND" for one)')
    .helpCommand("help [command]", "show help for a command");

  // ---- VMs ----------------------------------------------------------------------------------------
  changeCommand(program, "new", "create a VM (New-VM)")
    .argument("<name>", "VM name (up to 100 characters, spaces and any Unicode allowed)")
    .option("-g, --generation <n>", "1 (BIOS, i440fx) or 2 (UEFI, q35)", "2")
    .option("--cpus <n>", "virtual processors")
    .option("--memory <size>", "memory: MiB, or with a unit (512M, 2G)")
    .option("--disk <path>", "an existing disk image")
    .option("--disk-format <format>", "its format: vhdx, vhd, qcow2 or raw (else from the extension)")
    .option("--new-disk <size[:format]>", "a new disk, e.g. 20G or 20G:qcow2")
    .option("--dvd <iso>", "an ISO in the DVD drive")
    .option("--appliance", "boot from the built-in Linux appliance")
    .option("--notes <text>", "notes")
    .action(async (name: string, o: Record<string, string | boolean | undefined>) => {
      const generation = Number(o["generation"]);
      if (generation !== 1 && generation !== 2) throw new VmhostError("usage", "--generation must be 1 or 2");
      if (o["disk"] && o["newDisk"]) throw new VmhostError("usage", "give --disk or --new-disk, not both");
      const c = await ctx.conn();
      const vm = await c.api.vms.create({
        name,
        generation,
        processorCount: int(o["cpus"] as string | undefined, "--cpus"),
        memoryMiB: memoryMiB(o["memory"] as string | undefined),
        disk: o["disk"] as string | undefined,
        diskFormat: diskFormat(o["diskFormat"] as string | undefined, "--disk-format"),
        newDisk: typeof o["newDisk"] === "string" ? newDiskSpec(o["newDisk"]) : undefined,
        dvd: o["dvd"] as string | undefined,
        appliance: o["appliance"] === true ? true : undefined,
        notes: o["notes"] as string | undefined,
      });
      out(o["json"] === true, vm, () => console.log(`Created generation ${vm.generation} VM "${vm.name}" (${vm.id}).`));
    });

  readCommand(program, "list", "list the VMs with their state (Get-VM)").action(async (o: { json?: boolean }) => {
    const vms = await (await ctx.conn()).api.vms.list();
    out(o.json, vms, () =>
      printTable(
        ["Name", "State", "CPUs", "Memory", "Generation", "Heartbeat"],
        vms.map((x) => [
          x.name,
          x.state,
          String(x.cpus ?? ""),
          x.memoryMiB ? `${x.memoryMiB} MiB` : "",
          x.generation ? String(x.generation) : (x.error ?? ""),
          x.heartbeat === "disabled" ? "(disabled)" : (x.heartbeat ?? ""),
        ]),
      ),
    );
  });

  readCommand(program, "show", "show one VM (Get-VM)")
    .argument("<name>", "VM name or id")
    .action(async (name: string, o: { json?: boolean }) => {
      const vm = await (await ctx.conn()).api.vms.get({ vm: name });
      out(o.json, vm, () => printVm(vm));
    });

  const lifecycle = [
    ["start", "start a VM, or restore its saved state (Start-VM)", "start"],
    ["turn-off", "turn a VM off at once, like pulling the plug (Stop-VM -TurnOff)", "turnOff"],
    ["pause", "pause a running VM (Suspend-VM)", "pause"],
    ["resume", "resume a paused VM (Resume-VM)", "resume"],
    ["save", "save a VM's state to disk and stop it (Save-VM)", "save"],
    ["restart", "reset a running VM (Restart-VM)", "restart"],
  ] as const;
  for (const [cmd, desc, method] of lifecycle) {
    changeCommand(program, cmd, desc)
      .argument("<name>", "VM name or id")
      .action(async (name: string, o: { json?: boolean }) => {
        const r = await (await ctx.conn()).api.vms[method]({ vm: name });
        out(o.json, r, () => console.log(`${name}: ${r.state}`));
      });
  }

  changeCommand(program, "stop", "shut a VM down through the guest agent or ACPI (Stop-VM)")
    .argument("<name>", "VM name or id")
    .option("--force", "turn it off when it does not shut down within the timeout")
    .option("--timeout <seconds>", "how long to wait for the guest", "60")
    .action(async (name: string, o: { force?: boolean; timeout: string; json?: boolean }) => {
      const r = await (await ctx.conn()).api.vms.stop({ vm: name, force: o.force === true, timeoutSeconds: int(o.timeout, "--timeout") });
      out(o.json, r, () => console.log(`${name}: ${r.state}${r.forced ? " (turned off after the guest did not shut down)" : ""}`));
    });

  changeCommand(program, "remove", "remove a VM; its disks are kept unless --delete-disks (Remove-VM)")
    .argument("<name>", "VM name or id")
    .option("--delete-disks", "delete the disks vmhost made for it too")
    .action(async (name: string, o: { deleteDisks?: boolean; json?: boolean }) => {
      const r = await (await ctx.conn()).api.vms.remove({ vm: name, deleteDisks: o.deleteDisks === true ? "true" : "false" });
      out(o.json, r, () => {
        console.log(`Removed VM "${name}".`);
        for (const d of r.keptDisks) console.log(`  kept disk ${d}`);
        for (const d of r.deletedDisks) console.log(`  deleted disk ${d}`);
      });
    });

  changeCommand(program, "rename", "rename a VM (Rename-VM)")
    .argument("<name>", "VM name or id")
    .argument("<newname>", "the new name")
    .action(async (name: string, newName: string, o: { json?: boolean }) => {
      const vm = await (await ctx.conn()).api.vms.rename({ vm: name, name: newName });
      out(o.json, vm, () => console.log(`Renamed "${name}" to "${vm.name}" (${vm.id}).`));
    });

  changeCommand(program, "set", "change a VM's settings (Set-VM)")
    .argument("<name>", "VM name or id")
    .option("--cpus <n>", "virtual processors (VM off)")
    .option("--memory <size>", "memory (VM off)")
    .option("--notes <text>", "notes")
    .addOption(new Option("--checkpoint-type <type>", "checkpoint type").choices(["Disabled", "Production", "ProductionOnly", "Standard"]))
    .option("--display <on|off>", "a graphical console (VNC, proxied by vmhostd; VM off)")
    .action(async (name: string, o: { cpus?: string; memory?: string; notes?: string; checkpointType?: "Disabled" | "Production" | "ProductionOnly" | "Standard"; display?: string; json?: boolean }) => {
      const body = {
        processorCount: int(o.cpus, "--cpus"),
        memoryMiB: memoryMiB(o.memory),
        notes: o.notes,
        checkpointType: o.checkpointType,
        display: onOff(o.display, "--display"),
      };
      if (Object.values(body).every((x) => x === undefined)) throw new VmhostError("usage", "set needs --cpus, --memory, --notes, --checkpoint-type or --display");
      const vm = await (await ctx.conn()).api.vms.set({ vm: name, ...body });
      out(o.json, vm, () => console.log(`${name}: ${vm.cpus} CPU(s), ${vm.memoryMiB} MiB`));
    });

  const disk = program.command("disk").description("hard disks (Add/Remove-VMHardDiskDrive)");
  changeCommand(disk, "add", "attach a disk: an existing image or a new one (SCSI disks also while a Gen2 VM runs)")
    .argument("<name>", "VM name or id")
    .argument("[path]", "an existing image")
    .option("--new <size[:format]>", "a new disk, e.g. 1G or 1G:qcow2")
    .option("--format <format>", "the image's format: vhdx, vhd, qcow2 or raw")
    .addOption(new Option("--controller-type <type>", "controller").choices(["IDE", "SCSI", "ide", "scsi"]))
    .option("--controller <n>", "controller number")
    .option("--location <n>", "location on the controller")
    .action(async (name: string, path: string | undefined, o: Record<string, string | boolean | undefined>) => {
      if (!path && !o["new"]) throw new VmhostError("usage", "disk add needs a disk PATH or --new SIZE");
      const ct = typeof o["controllerType"] === "string" ? (o["controllerType"].toUpperCase() as "IDE" | "SCSI") : undefined;
      const vm = await (await ctx.conn()).api.vms.diskAdd({
        vm: name,
        path,
        format: diskFormat(o["format"] as string | undefined, "--format"),
        newDisk: typeof o["new"] === "string" ? newDiskSpec(o["new"]) : undefined,
        controllerType: ct,
        controllerNumber: int(o["controller"] as string | undefined, "--controller"),
        controllerLocation: int(o["location"] as string | undefined, "--location"),
      });
      out(o["json"] === true, vm, () => printTable(["Location", "Disk", "Format"], vm.disks.map((d) => [d.ref, d.path, d.format])));
    });
  changeCommand(disk, "remove", "detach a disk")
    .argument("<name>", "VM name or id")
    .argument("<disk>", 'its path or location ("SCSI 0:1")')
    .action(async (name: string, ref: string, o: { json?: boolean }) => {
      const vm = await (await ctx.conn()).api.vms.diskRemove({ vm: name, ref });
      out(o.json, vm, () => printTable(["Location", "Disk", "Format"], vm.disks.map((d) => [d.ref, d.path, d.format])));
    });

  const dvd = program.command("dvd").description("the DVD drive (Set-VMDvdDrive)");
  const dvdAction = (insert: boolean) => async (name: string, ...rest: unknown[]) => {
    const iso = insert ? (rest[0] as string) : null;
    const o = (insert ? rest[1] : rest[0]) as { drive?: string; json?: boolean };
    const vm = await (await ctx.conn()).api.vms.dvdSet({ vm: name, path: iso, drive: o.drive });
    out(o.json, vm, () => printTable(["Location", "Media"], vm.dvds.map((d) => [d.ref, d.path ?? "(empty)"])));
  };
  changeCommand(dvd, "set", "insert an ISO").argument("<name>", "VM name or id").argument("<iso>", "ISO path").option("--drive <location>", 'which drive ("IDE 1:0")').action(dvdAction(true));
  changeCommand(dvd, "eject", "eject the DVD").argument("<name>", "VM name or id").option("--drive <location>", "which drive").action(dvdAction(false));

  const floppy = program.command("floppy").description("the floppy drive, generation 1 (Set-VMFloppyDiskDrive)");
  changeCommand(floppy, "set", "insert a floppy image (.vfd)")
    .argument("<name>", "VM name or id")
    .argument("<vfd>", "floppy image path")
    .action(async (name: string, path: string, o: { json?: boolean }) => {
      const vm = await (await ctx.conn()).api.vms.floppySet({ vm: name, path });
      out(o.json, vm, () => console.log(`${name}: floppy ${vm.floppy ?? "(empty)"}`));
    });
  changeCommand(floppy, "eject", "eject the floppy")
    .argument("<name>", "VM name or id")
    .action(async (name: string, o: { json?: boolean }) => {
      const vm = await (await ctx.conn()).api.vms.floppySet({ vm: name, path: null });
      out(o.json, vm, () => console.log(`${name}: floppy ${vm.floppy ?? "(empty)"}`));
    });

  const nic = program.command("nic").description("network adapters (Add/Remove/Connect-VMNetworkAdapter)");
  const nicTable = (vm: { nics: { name: string; type: string; macAddress: string; switchName: string }[] }) =>
    printTable(["Adapter", "Type", "MAC", "Switch"], vm.nics.map((n) => [n.name, n.type, n.macAddress, n.switchName]));
  changeCommand(nic, "add", "add a network adapter (VM off)")
    .argument("<name>", "VM name or id")
    .option("--legacy", "an emulated legacy adapter (generation 1)")
    .option("--name <adapter>", "its name")
    .option("--mac <mac>", "a static MAC address")
    .option("--switch <switch>", "the switch it connects to")
    .action(async (name: string, o: { legacy?: boolean; name?: string; mac?: string; switch?: string; json?: boolean }) => {
      const vm = await (await ctx.conn()).api.vms.nicAdd({ vm: name, legacy: o.legacy === true, name: o.name, mac: o.mac, switchName: o.switch });
      out(o.json, vm, () => nicTable(vm));
    });
  changeCommand(nic, "remove", "remove a network adapter (VM off)")
    .argument("<name>", "VM name or id")
    .argument("<adapter>", "adapter name")
    .action(async (name: string, adapter: string, o: { json?: boolean }) => {
      const vm = await (await ctx.conn()).api.vms.nicRemove({ vm: name, ref: adapter });
      out(o.json, vm, () => nicTable(vm));
    });
  changeCommand(nic, "connect", "connect an adapter to a switch (live between bridged switches)")
    .argument("<name>", "VM name or id")
    .argument("<adapter>", "adapter name")
    .argument("<switch>", "switch name")
    .action(async (name: string, adapter: string, sw: string, o: { json?: boolean }) => {
      const vm = await (await ctx.conn()).api.vms.nicConnect({ vm: name, adapter, switchName: sw });
      out(o.json, vm, () => nicTable(vm));
    });

  program
    .command("console")
    .description("the serial console, interactive over a WebSocket (Ctrl-] detaches); --log prints what it printed")
    .argument("<name>", "VM name or id")
    .option("--log", "print the console log instead")
    .action(async (name: string, o: { log?: boolean }) => {
      const c = await ctx.conn();
      if (o.log) {
        process.stdout.write((await c.api.vms.consoleLog({ vm: name })).log);
        return;
      }
      process.exitCode = await attachConsole(name, await c.api.vms.serialConsole({ vm: name }));
    });

  readCommand(program, "events", "the VM's event journal")
    .argument("<name>", "VM name or id")
    .option("--follow", "then each new event as it happens (Ctrl-C ends it)")
    .action(async (name: string, o: { follow?: boolean; json?: boolean }) => {
      const c = await ctx.conn();
      if (o.follow) return followEvents(c, name, o.json === true);
      const evs = await c.api.vms.events({ vm: name });
      out(o.json, evs, () => {
        for (const e of evs) console.log(`${e.at}  ${e.type.padEnd(20)} ${e.message}`);
      });
    });

  // ---- host -------------------------------------------------------------------------------------
  readCommand(program, "host", "the host: accelerator (and why), QEMU and firmware versions, paths (Get-VMHost)")
    .option("--probe", "time KVM against TCG again first")
    .action(async (o: { probe?: boolean; json?: boolean }) => {
      const c = await ctx.conn();
      if (o.probe) await c.api.host.probeAccelerator();
      const h = await c.api.host.get();
      out(o.json, h, () => printHost(h));
    });

  const appliance = program.command("appliance").description("the built-in Linux appliance");
  changeCommand(appliance, "build", "build it (or reuse the cached build)")
    .option("--force", "build again")
    .action(async (o: { force?: boolean; json?: boolean }) => {
      const r = await (await ctx.conn()).api.host.buildAppliance({ force: o.force === true });
      const m = r.manifest as { id: string; kernel?: { package?: string; version?: string } };
      out(o.json, r, () => console.log(`Appliance ${m.id} in ${r.dir} (kernel ${m.kernel?.package ?? "?"} ${m.kernel?.version ?? "?"})`));
    });

  program
    .command("demo")
    .description("boot a Gen2 VM from the appliance and show its console (./setup demo)")
    .option("--keep-running", "leave it running")
    .action(async (o: { keepRunning?: boolean }) => {
      process.exitCode = await runDemo(await ctx.conn(), { keepRunning: o.keepRunning === true });
    });

  checkpointCommands(program, ctx);
  travelCommands(program, ctx);
  vhdCommands(program, ctx);
  hostsCommands(program, ctx);
  firmwareCommands(program, ctx);
  guestCommands(program, ctx);
  networkCommands(program, ctx);
  serviceCommands(program, ctx);
  accessCommands(program, ctx);
  completionCommands(program, ctx);
  return program;
}

/** Runs the CLI on argv (without node and the script); resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  let conn: Connection | undefined;
  let program: Command | undefined;
  const ctx: CliContext = {
    conn: async () => (conn ??= await Connection.open(program?.opts<{ remote?: string }>().remote)),
  };
  program = buildProgram(ctx);
  if (argv.length === 0) {
    process.stdout.write(program.helpInformation());
    return 2;
  }
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === "commander.helpDisplayed" || err.code === "commander.help" || err.code === "commander.version") return 0;
      return 2; // commander printed the usage error (and a suggestion)
    }
    throw err;
  } finally {
    conn?.close();
  }
}

export async function run(): Promise<void> {
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (err) {
    const e = err as Error & { code?: string; rule?: string };
    const rule = e instanceof ApiError && e.rule ? e.rule : e.code?.startsWith("rule:") ? e.code.slice(5) : undefined;
    process.stderr.write(`vmhost: ${e.message}${rule ? ` (rule ${rule})` : ""}\n`);
    process.exitCode = e.code === "usage" ? 2 : 1;
  }
}
