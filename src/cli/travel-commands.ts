import { resolve } from "node:path";
import type { Command } from "commander";
import type { ConvertGenerationResult } from "../service/convert.js";
import type { ExportResult } from "../service/travel/export.js";
import type { CompareReport, ImportResult } from "../service/travel/import.js";
import { VmhostError } from "../util/errors.js";
import { formatSize } from "../util/size.js";
import { int, out } from "./args.js";
import type { Connection } from "./connection.js";
import { changeCommand, type CliContext } from "./context.js";

/**
 * Export-VM, Import-VM / Compare-VM, Convert-VMGeneration: each a job of vmhostd's, followed
 * here with a progress bar on a terminal. vmhostd writes only under $VMHOST_HOME and the folders
 * in VMHOST_STORAGE_DIRS (colon-separated).
 */

/** A job followed to its end with a bar on stderr (per mille progress and the step's name); its result, or its error thrown. */
export async function followJob<T>(c: Connection, jobId: string, label: string, show: boolean): Promise<T> {
  let last = "";
  const job = await c.client.followJob(jobId, (j) => {
    if (!show || !(j.progress.total > 0)) return;
    const frac = Math.min(1, j.progress.done / j.progress.total);
    const fill = Math.round(frac * 30);
    const text = `\r${label} [${"#".repeat(fill)}${".".repeat(30 - fill)}] ${Math.floor(frac * 100).toString().padStart(3)}%  ${(j.progress.phase ?? "").slice(0, 30).padEnd(30)}`;
    if (text !== last) process.stderr.write((last = text));
  });
  if (last) process.stderr.write("\n");
  if (job.state !== "succeeded") throw new VmhostError(job.error?.code ?? job.state, job.error?.message ?? `the ${job.kind} job ${job.state}`);
  return job.result as T;
}

const showBar = (o: { json?: boolean }) => !o.json && process.stderr.isTTY === true;
const CAPTURE = ["CaptureSavedState", "CaptureDataConsistentState", "CaptureCrashConsistentState"] as const;
type Capture = (typeof CAPTURE)[number];

function switchMap(values: string[] | undefined): Record<string, string> | undefined {
  if (!values?.length) return undefined;
  const map: Record<string, string> = {};
  for (const s of values) {
    const i = s.indexOf("=");
    if (i <= 0 || i === s.length - 1) throw new VmhostError("usage", `--switch takes OLD=NEW (got ${JSON.stringify(s)})`);
    map[s.slice(0, i)] = s.slice(i + 1);
  }
  return map;
}

function printReport(r: CompareReport): void {
  console.log(`${r.path}: VM "${r.vm.name}" (${r.vm.id}), generation ${r.vm.generation}, ${r.vm.checkpoints} checkpoint${r.vm.checkpoints === 1 ? "" : "s"}, imports ${r.vm.state}`);
  console.log(`  as "${r.importAs.name}" (${r.importAs.id}), ${r.importAs.mode === "copy" ? "copying its files" : "using its files in place"}`);
  for (const i of r.items) {
    console.log(`  ${i.severity === "error" ? "ERROR" : "warning"} ${i.code}: ${i.message}`);
    console.log(`      fix: ${i.fix}`);
  }
  console.log(r.compatible ? `  compatible with this host${r.items.length ? " (see the warnings)" : ""}` : "  not compatible with this host: nothing was changed");
  console.log(`  checked: ${r.checked.join("; ")}`);
}

function printConversion(r: ConvertGenerationResult): void {
  const v = r.vm;
  console.log(`${r.dryRun ? "Plan (dry run, nothing changed)" : "Converted"}: generation 1 VM "${r.source}" -> generation 2 VM "${v.name}"${r.id ? ` (${r.id})` : ""}`);
  console.log(`  ${v.processorCount} processor${v.processorCount === 1 ? "" : "s"}, ${v.memoryMiB} MiB; Secure Boot ${v.secureBoot.enabled ? "on" : "off"} (${v.secureBoot.template}): ${v.secureBoot.why}`);
  for (const d of v.disks) console.log(`  ${d.fromSlot} ${d.from} -> ${d.slot} ${d.to} (${d.format})${d.boot ? " [boot disk, converted to GPT/UEFI]" : " [copied]"}`);
  for (const d of v.dvdDrives) console.log(`  DVD ${d.fromSlot} -> ${d.slot} ${d.path ?? "(empty)"}`);
  for (const n of v.networkAdapters) console.log(`  adapter "${n.name}" (${n.from} -> ${n.to}) on "${n.switchName}", MAC ${n.macAddress}`);
  console.log("  boot disk:");
  for (const s of r.disk.steps) console.log(`    - ${s}`);
  for (const w of r.disk.warnings) console.log(`    warning: ${w}`);
  for (const m of r.messages) console.log(`  ${m}`);
}


interface ImportOptions {
  register?: boolean;
  copy?: boolean;
  generateNewId?: boolean;
  vhdDestination?: string;
  name?: string;
  switch?: string[];
  compare?: boolean;
  json?: boolean;
}

export function travelCommands(program: Command, ctx: CliContext): void {
  changeCommand(program, "export", "Export-VM: DIR/<NAME>/ with Virtual Machines, Virtual Hard Disks, Snapshots and a SHA-256 manifest; a running VM keeps running")
    .argument("<name>", "VM name or id")
    .argument("<dir>", "destination folder")
    .option("--capture-live-state <mode>", `for a running VM: ${CAPTURE.join(", ")}`)
    .action(async (vm: string, dir: string, o: { captureLiveState?: string; json?: boolean }) => {
      if (o.captureLiveState !== undefined && !(CAPTURE as readonly string[]).includes(o.captureLiveState)) throw new VmhostError("usage", `--capture-live-state must be ${CAPTURE.join(", ")}`);
      const c = await ctx.conn();
      const job = await c.api.vms.export({ vm, destination: resolve(dir), ...(o.captureLiveState ? { captureLiveState: o.captureLiveState as Capture } : {}) });
      const r = await followJob<ExportResult>(c, job.id, "exporting", showBar(o));
      out(o.json, r, () => {
        console.log(`Exported VM "${r.vm}" to ${r.path}`);
        console.log(`  ${r.files} files, ${formatSize(r.bytes)} of content (${formatSize(r.written)} written, the rest left as holes), ${r.checkpoints} checkpoint${r.checkpoints === 1 ? "" : "s"}`);
        for (const m of r.messages) console.log(`  ${m}`);
      });
    });

  changeCommand(program, "import", "Import-VM (--register in place, or --copy [--generate-new-id]); with --compare, Compare-VM: what does not fit, each with its fix, nothing changed")
    .argument("<dir>", "the exported VM's folder")
    .option("--register", "use the files where they are (the default)")
    .option("--copy", "copy the files (to vmhost's disks folder, or --vhd-destination)")
    .option("--generate-new-id", "a new id and new dynamic MAC addresses")
    .option("--vhd-destination <dir>", "where copied disks go")
    .option("--name <name>", "import under another name")
    .option("--switch <old=new...>", "connect adapters of switch OLD to switch NEW (repeatable)")
    .option("--compare", "only report what does not fit (exit 1 when it does not)")
    .action(async (dir: string, o: ImportOptions) => {
      if (o.register && o.copy) throw new VmhostError("usage", "give --register (use the files in place) or --copy, not both");
      const body = {
        path: resolve(dir),
        mode: o.copy ? ("copy" as const) : ("register" as const),
        generateNewId: o.generateNewId === true,
        ...(o.vhdDestination ? { vhdDestination: resolve(o.vhdDestination) } : {}),
        ...(o.name ? { name: o.name } : {}),
        ...(o.switch?.length ? { switchMap: switchMap(o.switch)! } : {}),
      };
      const c = await ctx.conn();
      if (o.compare) {
        const job = await c.api.import.compare(body);
        const r = await followJob<CompareReport>(c, job.id, "checking", showBar(o));
        out(o.json, r, () => printReport(r));
        if (!r.compatible) process.exitCode = 1;
        return;
      }
      const job = await c.api.import.run(body);
      const r = await followJob<ImportResult>(c, job.id, "importing", showBar(o));
      out(o.json, r, () => {
        console.log(`Imported VM "${r.vm}" (${r.id}) from ${r.path}: ${r.state}, ${r.checkpoints} checkpoint${r.checkpoints === 1 ? "" : "s"}, ${r.mode === "copy" ? "files copied" : "files used in place"}`);
        for (const d of r.disks) console.log(`  disk ${d}`);
        for (const m of r.messages) console.log(`  ${m}`);
      });
    });

  changeCommand(program, "convert-generation", "Convert-VMGeneration: a new generation 2 VM \"NAME (Generation 2)\" from an Off generation 1 VM (which stays as it is), booted once")
    .argument("<name>", "VM name or id")
    .option("--new-name <name>", "the new VM's name")
    .option("--dry-run", "print the plan; change nothing")
    .option("--no-boot", "do not boot the new VM once")
    .option("--boot-timeout <seconds>", "how long the first boot may take")
    .option("--mbr2gpt", "a running Windows guest with its agent: run MBR2GPT /convert /allowFullOS in it first")
    .action(async (vm: string, o: { newName?: string; dryRun?: boolean; boot?: boolean; bootTimeout?: string; mbr2gpt?: boolean; json?: boolean }) => {
      const c = await ctx.conn();
      if (o.mbr2gpt) {
        const r = (await c.api.vms.mbrToGpt({ vm })) as { vm: string; validate: string; convert: string; next: string };
        out(o.json, r, () => {
          console.log(`${r.vm}: MBR2GPT /validate:\n${r.validate}\nMBR2GPT /convert:\n${r.convert}`);
          console.log(`Next: ${r.next}`);
        });
        return;
      }
      const timeout = int(o.bootTimeout, "--boot-timeout");
      const job = await c.api.vms.convertGeneration({ vm, ...(o.newName ? { newName: o.newName } : {}), dryRun: o.dryRun === true, boot: o.boot !== false, ...(timeout !== undefined ? { bootTimeoutSeconds: timeout } : {}) });
      const r = await followJob<ConvertGenerationResult>(c, job.id, "converting", showBar(o));
      out(o.json, r, () => printConversion(r));
      if (r.firstBoot && !r.firstBoot.ok) process.exitCode = 1;
    });
}
