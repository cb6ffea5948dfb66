import { resolve } from "node:path";
import type { Command } from "commander";
import type { CompactVhdResult, MergeVhdResult, ResizeVhdResult, VirtualHardDisk } from "../images/vhd.js";
import type { VhdView } from "../service/vhd.js";
import { VmhostError } from "../util/errors.js";
import { formatSize, parseSize } from "../util/size.js";
import { out } from "./args.js";
import { changeCommand, group, readCommand, type CliContext } from "./context.js";
import { followJob } from "./travel-commands.js";

/**
 * The virtual hard disk tools (New-VHD, Get-VHD, Convert-VHD, Resize-VHD, Merge-VHD,
 * Optimize-VHD) over vmhostd's jobs. Formats are explicit (the extension, or --format); disks a
 * running VM holds are refused for offline changes.
 */
type Fmt = "vhdx" | "vhd" | "qcow2" | "raw";

const FORMATS = ["vhdx", "vhd", "qcow2", "raw"];

function format(v: string | boolean | undefined, what: string): Fmt | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !FORMATS.includes(v)) throw new VmhostError("usage", `${what} must be vhdx, vhd, qcow2 or raw`);
  return v as Fmt;
}

function size(v: string | boolean | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw new VmhostError("usage", "--size needs a size, e.g. 20G");
  try {
    return parseSize(v);
  } catch (err) {
    throw new VmhostError("usage", `--size: ${(err as Error).message}`);
  }
}

function type(v: Record<string, unknown>): "Fixed" | "Dynamic" | undefined {
  if (v["fixed"] && v["dynamic"]) throw new VmhostError("usage", "give --fixed or --dynamic, not both");
  return v["fixed"] ? "Fixed" : v["dynamic"] ? "Dynamic" : undefined;
}

function printDisk(d: VirtualHardDisk | VhdView): void {
  const rows: [string, string][] = [
    ["Path", d.path],
    ["VhdFormat", d.vhdFormat],
    ["VhdType", d.vhdType],
    ["Size", `${formatSize(d.size)} (${d.size} bytes)`],
    ["FileSize", formatSize(d.fileSize)],
    ["Allocated", formatSize(d.allocatedSize)],
  ];
  if (d.minimumSize !== undefined) rows.push(["MinimumSize", formatSize(d.minimumSize)]);
  if (d.blockSize !== undefined) rows.push(["BlockSize", formatSize(d.blockSize)]);
  if (d.parentPath !== undefined) rows.push(["ParentPath", d.parentPath]);
  for (const [i, p] of d.parentChain.entries()) rows.push([i === 0 ? "ParentChain" : "", `${p.path} (${p.vhdFormat}, ${p.vhdType}, ${formatSize(p.size)})`]);
  if (d.dirty) rows.push(["Dirty", "yes (not closed cleanly)"]);
  const used = "usedBy" in d ? d.usedBy : [];
  rows.push(["Attached", d.attached ? `yes: VM "${d.attachedTo}"` : "no"]);
  for (const u of used) rows.push(["UsedBy", `VM "${u.vm}" (${u.running ? "running" : "not running"}): ${u.as}`]);
  for (const [k, val] of rows) console.log(`${k.padEnd(12)} ${val}`);
}


const showBar = (o: { json?: boolean }) => !o.json && process.stderr.isTTY === true;

export function vhdCommands(program: Command, ctx: CliContext): void {
  const vhd = group(program, "vhd", "virtual hard disks: new, get, convert, resize, merge, compact");
  changeCommand(vhd, "new", "New-VHD: fixed or dynamic, or a differencing (qcow2) disk on a parent")
    .argument("<path>", "the new disk")
    .option("--size <size>", "virtual size, e.g. 20G")
    .option("--fixed", "fully allocated")
    .option("--dynamic", "grows as written")
    .option("--format <format>", "vhdx, vhd, qcow2 or raw (default: the extension)")
    .option("--differencing", "a differencing disk (needs --parent)")
    .option("--parent <path>", "the parent of a differencing disk")
    .option("--parent-format <format>", "the parent's format")
    .action(async (path: string, o: Record<string, string | boolean | undefined> & { json?: boolean }) => {
      if ((o["differencing"] === true) !== (o["parent"] !== undefined)) throw new VmhostError("usage", "a differencing disk takes --differencing and --parent PARENT together");
      const parentFormat = format(o["parentFormat"], "--parent-format");
      const c = await ctx.conn();
      const job = await c.api.vhd.new({
        path: resolve(path),
        ...(format(o["format"], "--format") ? { format: format(o["format"], "--format")! } : {}),
        ...(size(o["size"]) !== undefined ? { sizeBytes: size(o["size"])! } : {}),
        ...(type(o) ? { type: type(o)! } : {}),
        ...(typeof o["parent"] === "string" ? { parent: { path: resolve(o["parent"]), ...(parentFormat ? { format: parentFormat } : {}) } } : {}),
      });
      const d = await followJob<VirtualHardDisk>(c, job.id, "creating", showBar(o));
      out(o.json, d, () => printDisk(d));
    });
  readCommand(vhd, "get", "Get-VHD: format, sizes, parent chain, which VM uses it")
    .argument("<path>", "the disk")
    .option("--format <format>", "vhdx, vhd, qcow2 or raw (default: the extension)")
    .action(async (path: string, o: { format?: string; json?: boolean }) => {
      const f = format(o.format, "--format");
      const d = (await (await ctx.conn()).api.vhd.get({ path: resolve(path), ...(f ? { format: f } : {}) })) as unknown as VhdView;
      out(o.json, d, () => printDisk(d));
    });
  changeCommand(vhd, "convert", "Convert-VHD, with progress")
    .argument("<source>", "the disk to convert")
    .argument("<destination>", "the new disk")
    .option("--format <format>", "the destination's format (default: its extension)")
    .option("--source-format <format>", "the source's format (default: its extension)")
    .option("--fixed", "fully allocated")
    .option("--dynamic", "grows as written")
    .action(async (source: string, destination: string, o: Record<string, string | boolean | undefined> & { json?: boolean }) => {
      const f = format(o["format"], "--format");
      const sf = format(o["sourceFormat"], "--source-format");
      const c = await ctx.conn();
      const job = await c.api.vhd.convert({ source: resolve(source), destination: resolve(destination), ...(f ? { format: f } : {}), ...(sf ? { sourceFormat: sf } : {}), ...(type(o) ? { type: type(o)! } : {}) });
      const d = await followJob<VirtualHardDisk>(c, job.id, "converting", showBar(o));
      out(o.json, d, () => printDisk(d));
    });
  changeCommand(vhd, "resize", "Resize-VHD: grow; shrink only where the partitions end before the new size")
    .argument("<path>", "the disk")
    .requiredOption("--size <size>", "the new virtual size, e.g. 40G")
    .option("--format <format>", "vhdx, vhd, qcow2 or raw (default: the extension)")
    .action(async (path: string, o: { size: string; format?: string; json?: boolean }) => {
      const f = format(o.format, "--format");
      const c = await ctx.conn();
      const job = await c.api.vhd.resize({ path: resolve(path), sizeBytes: size(o.size)!, ...(f ? { format: f } : {}) });
      const r = await followJob<ResizeVhdResult>(c, job.id, "resizing", showBar(o));
      out(o.json, r, () => console.log(`${r.disk.path}: ${formatSize(r.previousSize)} -> ${formatSize(r.disk.size)} (${r.method}${r.gptRelocated ? ", backup GPT moved to the new end" : ""}); grow or shrink the file system inside the guest`));
    });
  changeCommand(vhd, "merge", "Merge-VHD: a differencing disk into its parent")
    .argument("<child>", "the differencing disk")
    .option("--keep-child", "keep the child as an empty overlay")
    .option("--format <format>", "the child's format (default: its extension)")
    .action(async (child: string, o: { keepChild?: boolean; format?: string; json?: boolean }) => {
      const f = format(o.format, "--format");
      const c = await ctx.conn();
      const job = await c.api.vhd.merge({ path: resolve(child), ...(f ? { format: f } : {}), ...(o.keepChild ? { keepChild: true } : {}) });
      const r = await followJob<MergeVhdResult>(c, job.id, "merging", showBar(o));
      out(o.json, r, () => console.log(`${r.child} merged into ${r.parent.path}; the child was ${r.childAfter}`));
    });
  changeCommand(vhd, "compact", "Optimize-VHD: give back space the guest freed (dynamic vhdx/vhd and qcow2)")
    .argument("<path>", "the disk")
    .option("--format <format>", "vhdx, vhd, qcow2 or raw (default: the extension)")
    .action(async (path: string, o: { format?: string; json?: boolean }) => {
      const f = format(o.format, "--format");
      const c = await ctx.conn();
      const job = await c.api.vhd.compact({ path: resolve(path), ...(f ? { format: f } : {}) });
      const r = await followJob<CompactVhdResult>(c, job.id, "compacting", showBar(o));
      out(o.json, r, () => console.log(`${r.disk.path}: ${formatSize(r.fileSizeBefore)} -> ${formatSize(r.disk.fileSize)} (allocated ${formatSize(r.allocatedBefore)} -> ${formatSize(r.disk.allocatedSize)})`));
    });
}
