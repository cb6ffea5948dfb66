import { resolve } from "node:path";
import type { ServiceClient } from "../service/client.js";
import { streamCall } from "../service/client-stream.js";
import type { ConvertGenerationResult } from "../service/convert.js";
import type { ExportResult } from "../service/travel/export.js";
import type { CompareReport, ImportResult } from "../service/travel/import.js";
import { VmhostError } from "../util/errors.js";
import { formatSize } from "../util/size.js";
import { args, enc, int, need, out } from "./args.js";

/** Export-VM, Import-VM / Compare-VM, Convert-VMGeneration. */
export const TRAVEL_USAGE = `Moving VMs (Export-VM / Import-VM / Compare-VM / Convert-VMGeneration)
  export NAME DIR [--capture-live-state CaptureSavedState|CaptureDataConsistentState|CaptureCrashConsistentState]
                                         (DIR/<NAME>/: Virtual Machines, Virtual Hard Disks, Snapshots, manifest.json)
  import DIR [--register | --copy [--generate-new-id] [--vhd-destination DIR]] [--name NEW] [--switch OLD=NEW]...
  import DIR --compare [same options]    (what does not fit this host, each with its fix; changes nothing)
  convert-generation NAME [--new-name N] [--dry-run] [--no-boot] [--boot-timeout SECONDS]
  convert-generation NAME --mbr2gpt      (Windows guest, running with its agent: MBR2GPT /convert /allowFullOS)
  vmhostd writes only under $VMHOST_HOME and the folders in VMHOST_STORAGE_DIRS (colon-separated).`;

/** A progress bar on stderr when it is a terminal (progress lines otherwise go nowhere). */
export class Progress {
  private last = "";
  constructor(private readonly enabled: boolean) {}
  update(fraction: number, what: string): void {
    if (!this.enabled) return;
    const width = 30;
    const f = Math.min(1, Math.max(0, Number.isFinite(fraction) ? fraction : 0));
    const fill = Math.round(f * width);
    const text = `\r[${"#".repeat(fill)}${".".repeat(width - fill)}] ${Math.floor(f * 100).toString().padStart(3)}%  ${what.slice(0, 60).padEnd(60)}`;
    if (text === this.last) return;
    this.last = text;
    process.stderr.write(text);
  }
  finish(): void {
    if (this.enabled && this.last) process.stderr.write("\n");
    this.last = "";
  }
}

/** A streamed call: progress lines drive the bar; the result (or the error) ends it. */
export async function streamed<T>(api: ServiceClient, path: string, body: unknown, bar: Progress): Promise<T> {
  let result: T | undefined;
  let failure: { code?: string; message?: string } | undefined;
  try {
    await streamCall(api, "POST", path, body, (line) => {
      if (line["type"] === "progress") bar.update(Number(line["fraction"]), String(line["what"] ?? ""));
      else if (line["type"] === "result") result = line["result"] as T;
      else if (line["type"] === "error") failure = line["error"] as typeof failure;
    });
  } finally {
    bar.finish();
  }
  if (failure) throw new VmhostError(failure.code ?? "error", failure.message ?? "the operation failed");
  if (result === undefined) throw new VmhostError("error", "vmhostd ended the operation without a result");
  return result;
}

function bar(v: Record<string, unknown>): Progress {
  return new Progress(!v["json"] && process.stderr.isTTY === true);
}

const CAPTURE = ["CaptureSavedState", "CaptureDataConsistentState", "CaptureCrashConsistentState"];

export async function exportCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const { values: v, positionals: p } = args(rest, { "capture-live-state": { type: "string" } });
  const name = need(p, 0, "VM name");
  const dir = resolve(need(p, 1, "destination folder"));
  const cap = v["capture-live-state"];
  if (cap !== undefined && !CAPTURE.includes(String(cap))) throw new VmhostError("usage", `--capture-live-state must be ${CAPTURE.join(", ")}`);
  const r = await streamed<ExportResult>(api, `/v1/vms/${enc(name)}/export`, { destination: dir, captureLiveState: cap }, bar(v));
  out(!!v["json"], r, () => {
    console.log(`Exported VM "${r.vm}" to ${r.path}`);
    console.log(`  ${r.files} files, ${formatSize(r.bytes)} of content (${formatSize(r.written)} written, the rest left as holes), ${r.checkpoints} checkpoint${r.checkpoints === 1 ? "" : "s"}`);
    for (const m of r.messages) console.log(`  ${m}`);
  });
  return 0;
}

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

export async function importCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const { values: v, positionals: p } = args(rest, {
    register: { type: "boolean" },
    copy: { type: "boolean" },
    "generate-new-id": { type: "boolean" },
    "vhd-destination": { type: "string" },
    name: { type: "string" },
    switch: { type: "string", multiple: true },
    compare: { type: "boolean" },
  });
  if (v["register"] && v["copy"]) throw new VmhostError("usage", "give --register (use the files in place) or --copy, not both");
  const body = {
    path: resolve(need(p, 0, "export folder")),
    mode: v["copy"] ? "copy" : "register",
    generateNewId: v["generate-new-id"] === true,
    vhdDestination: typeof v["vhd-destination"] === "string" ? resolve(v["vhd-destination"]) : undefined,
    name: v["name"] as string | undefined,
    switchMap: switchMap((v as unknown as { switch?: string[] })["switch"]),
  };
  if (v["compare"]) {
    const r = await streamed<CompareReport>(api, "/v1/import/compare", body, bar(v));
    out(!!v["json"], r, () => printReport(r));
    return r.compatible ? 0 : 1;
  }
  const r = await streamed<ImportResult>(api, "/v1/import", body, bar(v));
  out(!!v["json"], r, () => {
    console.log(`Imported VM "${r.vm}" (${r.id}) from ${r.path}: ${r.state}, ${r.checkpoints} checkpoint${r.checkpoints === 1 ? "" : "s"}, ${r.mode === "copy" ? "files copied" : "files used in place"}`);
    for (const d of r.disks) console.log(`  disk ${d}`);
    for (const m of r.messages) console.log(`  ${m}`);
  });
  return 0;
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

export async function convertGenerationCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const { values: v, positionals: p } = args(rest, {
    "new-name": { type: "string" },
    "dry-run": { type: "boolean" },
    "no-boot": { type: "boolean" },
    "boot-timeout": { type: "string" },
    mbr2gpt: { type: "boolean" },
  });
  const name = need(p, 0, "VM name");
  if (v["mbr2gpt"]) {
    const r = await api.call<{ vm: string; validate: string; convert: string; next: string }>("POST", `/v1/vms/${enc(name)}/mbr2gpt`);
    out(!!v["json"], r, () => {
      console.log(`${r.vm}: MBR2GPT /validate:\n${r.validate}\nMBR2GPT /convert:\n${r.convert}`);
      console.log(`Next: ${r.next}`);
    });
    return 0;
  }
  const r = await streamed<ConvertGenerationResult>(
    api,
    `/v1/vms/${enc(name)}/convert-generation`,
    { newName: v["new-name"] as string | undefined, dryRun: v["dry-run"] === true, boot: v["no-boot"] !== true, bootTimeoutSeconds: int(v["boot-timeout"], "--boot-timeout") },
    bar(v),
  );
  out(!!v["json"], r, () => printConversion(r));
  return r.firstBoot && !r.firstBoot.ok ? 1 : 0;
}
