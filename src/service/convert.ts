import { randomUUID } from "node:crypto";
import { lstat, readdir, rm, unlink } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { GuestSessions } from "../guest/registry.js";
import { execWait } from "../guest/exec.js";
import { ConversionRefusedError, convert, type ConversionPlan, type ImageFormat } from "../images/generation/index.js";
import { convertVhd } from "../images/vhd.js";
import { CONFIG_FORMAT_VERSION, RuleError, nameKey, slotRef, validateVmName, type ConfigStore, type DiskFormat, type MacPool, type NetworkAdapter, type VmConfig } from "../model/index.js";
import type { Diagnosis } from "../supervisor/diagnostics/index.js";
import type { Supervisor, VmRef } from "../supervisor/supervisor.js";
import { VmhostError } from "../util/errors.js";
import type { VmChanges } from "./changes.js";
import { newDiskPath } from "./devices.js";
import type { DiskPolicy } from "./disks.js";
import type { VmManager } from "./vms.js";

export interface ConvertGenerationRequest {
  /** Default: "NAME (Generation 2)". */
  newName?: string;
  /** Print the plan; change nothing. */
  dryRun?: boolean;
  /** Boot the new VM once and report how it went (default true). */
  boot?: boolean;
  /** How long the first boot may take (default 300 s: TCG on a loaded host is slow). */
  bootTimeoutSeconds?: number;
}

/** What becomes of each part of the Gen1 VM. */
export interface VmConversionPlan {
  name: string;
  processorCount: number;
  memoryMiB: number;
  disks: { from: string; fromSlot: string; to: string; slot: string; format: DiskFormat; boot: boolean }[];
  dvdDrives: { path: string | null; fromSlot: string; slot: string }[];
  networkAdapters: { name: string; from: NetworkAdapter["type"]; to: "Synthetic"; switchName: string; macAddress: string }[];
  secureBoot: { enabled: boolean; template: VmConfig["firmware"]["secureBootTemplate"]; why: string };
  notes: string[];
}

export interface FirstBoot {
  ok: boolean;
  /** How success was seen: the guest agent answered, or the console printed the ready line (or a login prompt). */
  seenBy?: "guest agent" | "console";
  line?: string;
  seconds: number;
  state: string;
  diagnosis?: Diagnosis;
  message: string;
}

export interface ConvertGenerationResult {
  source: string;
  dryRun: boolean;
  vm: VmConversionPlan;
  /** The boot disk's plan (src/images/generation). */
  disk: ConversionPlan;
  id?: string;
  firstBoot?: FirstBoot;
  messages: string[];
}

/** The appliance's ready line; other guests count as up at a login prompt or when their agent answers. */
const READY_RE = /vmhost-appliance: ready|\blogin:/;

/** Hyper-V Gen2 VMs boot VHDX, not VHD: a VHD disk comes over as VHDX; the other formats stay. */
function gen2Format(f: DiskFormat): DiskFormat {
  return f === "vhd" ? "vhdx" : f;
}

function imageFormat(f: DiskFormat): ImageFormat {
  return f === "vhd" ? "vpc" : f;
}

const OsInfo = z.object({ id: z.string().optional(), name: z.string().optional(), "pretty-name": z.string().optional() }).passthrough();

/** Leftovers of a conversion killed half way (src/images/generation/convert.ts names them so). */
const CONVERT_TEMP_RE = /^\..+\.(\d+)\.[0-9a-f]{8}\.convert-(raw|out)\.tmp$/;

/**
 * Convert-VMGeneration: a Generation 1 VM becomes a new Generation 2 VM "NAME (Generation 2)",
 * offline and on copies, the Gen1 VM untouched (it is held under its lock while its disks are
 * read). The boot disk (the first IDE hard disk, the one SeaBIOS boots) is converted by
 * src/images/generation (MBR -> GPT, an EFI System Partition, a UEFI loader on the removable
 * path, which OVMF finds on the disk with no boot entry); data disks are copied (qemu-img);
 * disks and DVD drives move to SCSI; legacy adapters become synthetic on the same switches with
 * new dynamic MACs; the floppy is dropped. The new VM is made through the change transaction
 * (the NVRAM step makes its store from the template with Secure Boot as the plan says), then
 * booted once: success when the guest agent answers or the console shows the ready line.
 */
export class GenerationConverter {
  private readonly store: ConfigStore;
  private readonly supervisor: Supervisor;
  private readonly changes: VmChanges;
  private readonly vms: VmManager;
  private readonly disks: DiskPolicy;
  private readonly macs: MacPool;
  private readonly sessions: GuestSessions;
  private readonly diagnosis: (vmId: string) => Diagnosis | null | undefined;
  private readonly disksDir: string;

  constructor(deps: {
    store: ConfigStore;
    supervisor: Supervisor;
    changes: VmChanges;
    vms: VmManager;
    disks: DiskPolicy;
    macs: MacPool;
    sessions: GuestSessions;
    diagnosis: (vmId: string) => Diagnosis | null | undefined;
    disksDir: string;
  }) {
    this.store = deps.store;
    this.supervisor = deps.supervisor;
    this.changes = deps.changes;
    this.vms = deps.vms;
    this.disks = deps.disks;
    this.macs = deps.macs;
    this.sessions = deps.sessions;
    this.diagnosis = deps.diagnosis;
    this.disksDir = deps.disksDir;
  }

  /**
   * Converts VM `ref` (Generation 1, Off). Errors: `not-generation-1`, `invalid-state`,
   * `no-boot-disk`, `vm-name-in-use` (rule), `generation-conversion-refused`
   * (ConversionRefusedError: every reason with what to do), and the disk tools' own.
   */
  async convert(ref: string, req: ConvertGenerationRequest, progress?: (fraction: number, what: string) => void): Promise<ConvertGenerationResult> {
    const src = await this.store.resolve(ref);
    this.refuseUnlessConvertible(src, await this.supervisor.state(src));
    const name = req.newName ?? `${src.name} (Generation 2)`;
    try {
      validateVmName(name);
    } catch (err) {
      throw new VmhostError("invalid-name", `${(err as Error).message}; give the new VM a name with --new-name`);
    }
    const clash = (await this.store.configs()).find((v) => nameKey(v.name) === nameKey(name));
    if (clash) throw new RuleError("vm-name-in-use", `a VM named "${clash.name}" exists already: give the new VM another name with --new-name`);
    const id = randomUUID();
    const messages: string[] = [];
    const log = (line: string) => progress?.(0, line);

    if (req.dryRun) {
      const vmPlan = await this.planVm(src, id, name, undefined, true);
      const boot = vmPlan.disks.find((d) => d.boot)!;
      const source = src.hardDisks.find((d) => slotRef(d) === boot.fromSlot)!;
      const r = await this.withWindowsHint(src, () => convert(source.path, imageFormat(source.format), boot.to, { dstFormat: imageFormat(boot.format), dryRun: true, workDir: this.disksDir, log }));
      vmPlan.secureBoot = { ...r.plan.secureBoot };
      return { source: src.name, dryRun: true, vm: vmPlan, disk: r.plan, messages: ["dry run: nothing was changed"] };
    }

    let diskPlan: ConversionPlan | undefined;
    let vmPlan: VmConversionPlan | undefined;
    const created = await this.supervisor.withLock(src.id, async () => {
      await this.changes.recover(this.store.home(src.id));
      const current = await this.store.get(src.id);
      this.refuseUnlessConvertible(current, await this.supervisor.state(current));
      const plan = await this.planVm(current, id, name, this.macs, false);
      vmPlan = plan;
      const draft = this.draft(current, id, plan);
      const total = plan.disks.length;
      const { vm } = await this.changes.create(
        draft,
        async (ctx) => {
          for (const [i, d] of plan.disks.entries()) {
            const from = current.hardDisks.find((x) => slotRef(x) === d.fromSlot)!;
            await ctx.txn.created(d.to);
            if (d.boot) {
              progress?.(i / total, `converting the boot disk ${from.path}`);
              const r = await this.withWindowsHint(current, () =>
                convert(from.path, imageFormat(from.format), d.to, { dstFormat: imageFormat(d.format), workDir: this.disksDir, log: (l) => progress?.(i / total, l) }),
              );
              diskPlan = r.plan;
              // The store the NVRAM step makes follows the loader's signer.
              ctx.vm.firmware.secureBoot = r.plan.secureBoot.enabled;
              ctx.vm.firmware.secureBootTemplate = r.plan.secureBoot.template;
              plan.secureBoot = { ...r.plan.secureBoot };
            } else {
              await convertVhd(
                from.path,
                d.to,
                { sourceFormat: from.format, format: d.format },
                { allowedDirs: this.disks.policy.allowedDirs, onProgress: (f) => progress?.((i + f) / total, `copying ${from.path} to ${d.slot}`) },
              );
            }
          }
          for (const n of plan.notes) ctx.messages.push(n);
          ctx.event("converted", `made from generation 1 VM "${current.name}" (Convert-VMGeneration)`, { from: current.id });
        },
        { event: { type: "created", message: `generation 2 VM "${name}" created from generation 1 VM "${current.name}"` } },
      );
      await this.supervisor.event(current, "converted-to-generation-2", `a generation 2 copy "${vm.name}" was made; this VM is unchanged`, { to: vm.id });
      return vm;
    });
    messages.push(`generation 2 VM "${created.name}" (${created.id}) created; "${src.name}" is unchanged`, ...vmPlan!.notes);
    const result: ConvertGenerationResult = { source: src.name, dryRun: false, vm: vmPlan!, disk: diskPlan!, id: created.id, messages };
    if (req.boot !== false) {
      progress?.(1, `starting "${created.name}" once`);
      result.firstBoot = await this.firstBoot(created, (req.bootTimeoutSeconds ?? 300) * 1000);
      messages.push(result.firstBoot.message);
    }
    return result;
  }

  private refuseUnlessConvertible(vm: VmConfig, state: string): void {
    if (vm.generation !== 1) throw new VmhostError("not-generation-1", `VM "${vm.name}" is generation ${vm.generation} already; only generation 1 VMs are converted`, 409);
    if (state !== "Off") {
      const how = state === "Saved" ? "start it and shut it down, or discard the saved state with turn-off" : "shut it down first (vmhost stop)";
      throw new VmhostError("invalid-state", `VM "${vm.name}" is ${state}: its disks are converted offline, so it must be Off (${how})`, 409);
    }
    if (!vm.hardDisks.some((d) => d.controllerType === "IDE")) {
      throw new VmhostError("no-boot-disk", `VM "${vm.name}" has no IDE hard disk, so it boots from none (a generation 1 VM boots from its first IDE hard disk): there is no boot disk to convert`, 409);
    }
  }

  /** A Windows guest that has not run MBR2GPT: say how vmhost can run it through the agent. */
  private async withWindowsHint<T>(vm: VmConfig, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (err) {
      if (!(err instanceof ConversionRefusedError) || !err.refusals.some((r) => r.code === "windows-needs-mbr2gpt")) throw err;
      throw new ConversionRefusedError(
        err.source,
        err.refusals.map((r) =>
          r.code === "windows-needs-mbr2gpt"
            ? { ...r, fix: `${r.fix}. With the QEMU guest agent running in the guest, vmhost runs it for you: vmhost start "${vm.name}", then vmhost convert-generation "${vm.name}" --mbr2gpt` }
            : r,
        ),
      );
    }
  }

  /** What becomes of each device; `macs` undefined (dry run): new addresses are shown as "(new dynamic)". */
  private async planVm(vm: VmConfig, id: string, name: string, macs: MacPool | undefined, dry: boolean): Promise<VmConversionPlan> {
    const order = (a: { controllerType: string; controllerNumber: number; controllerLocation: number }, b: typeof a) =>
      (a.controllerType === b.controllerType ? 0 : a.controllerType === "IDE" ? -1 : 1) || a.controllerNumber - b.controllerNumber || a.controllerLocation - b.controllerLocation;
    const disks = [...vm.hardDisks].sort(order);
    const bootIndex = disks.findIndex((d) => d.controllerType === "IDE");
    const [boot] = disks.splice(bootIndex, 1);
    const notes: string[] = [];
    const plan: VmConversionPlan = {
      name,
      processorCount: vm.processorCount,
      memoryMiB: vm.memoryMiB,
      disks: [],
      dvdDrives: [],
      networkAdapters: [],
      secureBoot: { enabled: false, template: "MicrosoftUEFICertificateAuthority", why: "decided by the boot loader the conversion installs" },
      notes,
    };
    let loc = 0;
    for (const d of [boot!, ...disks]) {
      const format = gen2Format(d.format);
      const to = await newDiskPath(this.disksDir, id, loc === 0 ? "boot" : `scsi0-${loc}`, format);
      plan.disks.push({ from: d.path, fromSlot: slotRef(d), to, slot: `SCSI 0:${loc}`, format, boot: loc === 0 });
      if (format !== d.format) notes.push(`${d.path} (${d.format}) is copied as ${format}: generation 2 VMs boot VHDX, not VHD`);
      loc++;
    }
    for (const dvd of [...vm.dvdDrives].sort(order)) plan.dvdDrives.push({ path: dvd.path, fromSlot: slotRef(dvd), slot: `SCSI 0:${loc++}` });
    if (vm.floppy) notes.push(`the floppy drive${vm.floppy.path ? ` (${vm.floppy.path})` : ""} is left out: generation 2 VMs have none; copy what it holds into the guest another way`);
    // Adapters keep their names, except a legacy adapter's default name, which becomes the next free "Network Adapter".
    const renamed = (n: NetworkAdapter) => n.type === "Legacy" && /^Legacy Network Adapter( \d+)?$/.test(n.name);
    const names = new Set(vm.networkAdapters.filter((n) => !renamed(n)).map((n) => n.name.toLowerCase()));
    for (const n of vm.networkAdapters) {
      let nicName = n.name;
      if (renamed(n)) {
        nicName = "Network Adapter";
        for (let i = 2; names.has(nicName.toLowerCase()); i++) nicName = `Network Adapter ${i}`;
        names.add(nicName.toLowerCase());
      }
      const mac = dry || !macs ? "(new dynamic)" : await macs.allocate();
      plan.networkAdapters.push({ name: nicName, from: n.type, to: "Synthetic", switchName: n.switchName, macAddress: mac });
      if (n.type === "Legacy") notes.push(`legacy adapter "${n.name}" becomes synthetic adapter "${nicName}" on switch "${n.switchName}" (generation 2 has no legacy adapter; the guest needs virtio-net)`);
      if (!n.dynamicMac) notes.push(`adapter "${n.name}" had the static MAC ${n.macAddress}; the copy gets a new dynamic one (the original VM keeps its address)`);
    }
    if (vm.hardDisks.some((d) => d.controllerType === "IDE")) notes.push("IDE disks move to SCSI: the guest's initramfs needs virtio_scsi (Windows: the vioscsi driver installed before the switch)");
    return plan;
  }

  private draft(vm: VmConfig, id: string, plan: VmConversionPlan): VmConfig {
    const nics: NetworkAdapter[] = vm.networkAdapters.map((n, i) => {
      const p = plan.networkAdapters[i]!;
      return { name: p.name, type: "Synthetic", macAddress: p.macAddress, dynamicMac: true, switchName: n.switchName, pciSlot: n.pciSlot };
    });
    const slotOf = (s: string) => ({ controllerType: "SCSI" as const, controllerNumber: 0, controllerLocation: Number(s.split(":")[1]) });
    return {
      formatVersion: CONFIG_FORMAT_VERSION,
      name: plan.name,
      id,
      generation: 2,
      processorCount: vm.processorCount,
      memoryMiB: vm.memoryMiB,
      notes: vm.notes,
      createdAt: new Date().toISOString(),
      hardDisks: plan.disks.map((d) => ({ ...slotOf(d.slot), path: d.to, format: d.format })),
      dvdDrives: plan.dvdDrives.map((d) => ({ ...slotOf(d.slot), path: d.path })),
      networkAdapters: nics,
      firmware: {
        secureBoot: false,
        secureBootTemplate: "MicrosoftUEFICertificateAuthority",
        preferredNetworkBootProtocol: "IPv4",
        pauseAfterBootFailure: false,
        startupOrder: ["CD", "IDE", "LegacyNetworkAdapter", "Floppy"],
        ...(vm.firmware.networkBootPayload ? { networkBootPayload: vm.firmware.networkBootPayload } : {}),
      },
      ...(vm.appliance ? { appliance: vm.appliance } : {}),
      ...(vm.integrationServices ? { integrationServices: structuredClone(vm.integrationServices) } : {}),
      checkpointType: vm.checkpointType,
      display: vm.display,
    };
  }

  /**
   * Starts the new VM and waits for a sign of life: the guest agent answers, or a console line
   * shows the appliance's ready line or a login prompt. A boot diagnosis (src/supervisor/
   * diagnostics), the VM going Off, or the timeout ends the wait as a failure; the VM is then
   * turned off and kept for a look.
   */
  async firstBoot(vm: VmConfig, timeoutMs: number): Promise<FirstBoot> {
    const t0 = Date.now();
    let line: string | undefined;
    const onLine = (who: VmRef, text: string) => {
      if (who.id === vm.id && line === undefined && READY_RE.test(text)) line = text.trim();
    };
    this.supervisor.on("console-line", onLine);
    const seconds = () => Math.round((Date.now() - t0) / 100) / 10;
    try {
      await this.vms.start(vm.id);
      for (;;) {
        const state = this.supervisor.stateOf(vm) ?? "Off";
        if (line !== undefined) return { ok: true, seenBy: "console", line, seconds: seconds(), state, message: `first boot: the guest is up after ${seconds()} s (its console printed "${line}")` };
        if (this.sessions.isAlive(vm.id)) return { ok: true, seenBy: "guest agent", seconds: seconds(), state, message: `first boot: the guest is up after ${seconds()} s (its guest agent answers)` };
        const diagnosis = this.diagnosis(vm.id);
        const failed = diagnosis ? `the boot failed: ${diagnosis.title}. ${diagnosis.fix}` : state === "Off" ? "the VM went Off during its first boot" : Date.now() - t0 > timeoutMs ? `no sign of life within ${timeoutMs / 1000} s (no ready line, no login prompt, no guest agent)` : undefined;
        if (failed) {
          if (this.supervisor.isRunning(vm.id)) await this.vms.turnOff(vm.id).catch(() => undefined);
          return {
            ok: false,
            seconds: seconds(),
            state: this.supervisor.stateOf(vm) ?? "Off",
            ...(diagnosis ? { diagnosis } : {}),
            message: `first boot of "${vm.name}": ${failed}. It was turned off and kept for a look (vmhost show "${vm.name}", vmhost console "${vm.name}" --log); remove it with vmhost remove "${vm.name}" --delete-disks. The generation 1 VM is unchanged.`,
          };
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    } finally {
      this.supervisor.off("console-line", onLine);
    }
  }

  /**
   * Runs `MBR2GPT /convert /allowFullOS` (after `/validate`) in a running Windows guest of a
   * generation 1 VM through its guest agent (qemu-ga guest-exec), so the disk is GPT with
   * Windows' own EFI System Partition before convert-generation takes it. Errors:
   * `not-generation-1`, `invalid-state` (not running, or no agent), `not-windows`, `mbr2gpt-failed`.
   */
  async mbr2gpt(ref: string): Promise<{ vm: string; validate: string; convert: string; next: string }> {
    const vm = await this.store.resolve(ref);
    if (vm.generation !== 1) throw new VmhostError("not-generation-1", `VM "${vm.name}" is generation ${vm.generation}; MBR2GPT prepares generation 1 VMs`, 409);
    const session = this.sessions.get(vm.id);
    if (!session || !this.sessions.isAlive(vm.id)) {
      throw new VmhostError(
        "invalid-state",
        `VM "${vm.name}" is not running with its guest agent answering: start it (the QEMU guest agent must run in it), or run "MBR2GPT /convert /allowFullOS" yourself in an elevated prompt in the guest`,
        409,
      );
    }
    const os = await session.agent.call("guest-get-osinfo", undefined, OsInfo).catch(() => undefined);
    if (os?.id !== "mswindows") {
      throw new VmhostError("not-windows", `the guest of VM "${vm.name}" is ${os?.["pretty-name"] ?? os?.name ?? "not Windows (its agent gives no OS)"}: MBR2GPT is Windows' tool; a Linux guest is converted by convert-generation itself`, 409);
    }
    const tool = "C:\\Windows\\System32\\MBR2GPT.exe";
    const run = async (mode: "/validate" | "/convert") => {
      const r = await execWait(session.agent, tool, [mode, "/allowFullOS"], 10 * 60_000);
      const out = `${r.stdout}${r.stderr}`.trim();
      if (r.exitCode !== 0) throw new VmhostError("mbr2gpt-failed", `MBR2GPT ${mode} failed in the guest (exit ${r.exitCode ?? "?"}):\n${out}`, 409);
      return out;
    };
    const validate = await run("/validate");
    const converted = await run("/convert");
    await this.supervisor.event(vm, "mbr2gpt", "MBR2GPT /convert /allowFullOS ran in the guest through its agent");
    return { vm: vm.name, validate, convert: converted, next: `shut the guest down (vmhost stop "${vm.name}"), then: vmhost convert-generation "${vm.name}"` };
  }

  /** At service start: temp files and work folders of conversions a killed vmhostd left in the disks folder. */
  async sweep(): Promise<string[]> {
    const gone: string[] = [];
    for (const name of await readdir(this.disksDir).catch(() => [] as string[])) {
      const p = join(this.disksDir, name);
      const m = CONVERT_TEMP_RE.exec(name);
      if (m) {
        const pid = Number(m[1]);
        if (pid !== process.pid && !alive(pid)) await unlink(p).then(() => gone.push(p), () => undefined);
      } else if (/^vmhost-convert-[A-Za-z0-9]{6}$/.test(name) && (await lstat(p)).isDirectory()) {
        // inspect()/convert() work folders; no conversion runs before the service serves.
        await rm(p, { recursive: true, force: true }).then(() => gone.push(p), () => undefined);
      }
    }
    return gone;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
