import { resolve } from "node:path";
import type { VirtualHardDisk, ResizeVhdResult, MergeVhdResult, CompactVhdResult } from "../images/vhd.js";
import type { ServiceClient } from "../service/client.js";
import type { VhdView } from "../service/vhd.js";
import { VmhostError } from "../util/errors.js";
import { formatSize, parseSize } from "../util/size.js";
import { args, need, out } from "./args.js";
import { Progress, streamed } from "./travel-commands.js";

/** The virtual hard disk tools (New-VHD, Get-VHD, Convert-VHD, Resize-VHD, Merge-VHD, Optimize-VHD). */
export const VHD_USAGE = `Virtual hard disks (New-VHD / Get-VHD / Convert-VHD / Resize-VHD / Merge-VHD / Optimize-VHD)
  vhd new PATH --size SIZE [--fixed|--dynamic] [--format vhdx|vhd|qcow2|raw]
  vhd new PATH.qcow2 --differencing --parent PARENT [--parent-format F] [--size SIZE]
  vhd get PATH [--format F] [--json]      (format, sizes, parent chain, which VM uses it)
  vhd convert SRC DST [--format vhdx|vhd|qcow2|raw] [--fixed|--dynamic] [--source-format F]
  vhd resize PATH --size SIZE             (grow; shrink only where the partitions end before SIZE)
  vhd merge CHILD [--keep-child]          (a differencing disk into its parent)
  vhd compact PATH                        (dynamic vhdx/vhd and qcow2)
  Formats are explicit (the extension, or --format); disks a running VM holds are refused.`;

const FORMATS = ["vhdx", "vhd", "qcow2", "raw"];

function format(v: string | boolean | undefined, what: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !FORMATS.includes(v)) throw new VmhostError("usage", `${what} must be vhdx, vhd, qcow2 or raw`);
  return v;
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

export async function vhdCommand(api: ServiceClient, rest: string[]): Promise<number> {
  const [sub, ...r2] = rest;
  const { values: v, positionals: p } = args(r2, {
    size: { type: "string" },
    fixed: { type: "boolean" },
    dynamic: { type: "boolean" },
    format: { type: "string" },
    "source-format": { type: "string" },
    differencing: { type: "boolean" },
    parent: { type: "string" },
    "parent-format": { type: "string" },
    "keep-child": { type: "boolean" },
  });
  const bar = new Progress(!v["json"] && process.stderr.isTTY === true);
  const abs = (i: number, what: string) => resolve(need(p, i, what));
  switch (sub) {
    case "new": {
      if ((v["differencing"] === true) !== (v["parent"] !== undefined)) throw new VmhostError("usage", "a differencing disk takes --differencing and --parent PARENT together");
      const body = {
        path: abs(0, "the new disk's path"),
        format: format(v["format"], "--format"),
        sizeBytes: size(v["size"]),
        type: type(v),
        parent: typeof v["parent"] === "string" ? { path: resolve(v["parent"]), format: format(v["parent-format"], "--parent-format") } : undefined,
      };
      const d = await streamed<VirtualHardDisk>(api, "/v1/vhd/new", body, bar);
      out(!!v["json"], d, () => printDisk(d));
      return 0;
    }
    case "get": {
      const d = await api.call<VhdView>("POST", "/v1/vhd/get", { path: abs(0, "disk path"), format: format(v["format"], "--format") });
      out(!!v["json"], d, () => printDisk(d));
      return 0;
    }
    case "convert": {
      const body = { source: abs(0, "source disk"), sourceFormat: format(v["source-format"], "--source-format"), destination: abs(1, "destination disk"), format: format(v["format"], "--format"), type: type(v) };
      const d = await streamed<VirtualHardDisk>(api, "/v1/vhd/convert", body, bar);
      out(!!v["json"], d, () => printDisk(d));
      return 0;
    }
    case "resize": {
      const s = size(v["size"]);
      if (s === undefined) throw new VmhostError("usage", "vhd resize needs --size");
      const r = await streamed<ResizeVhdResult>(api, "/v1/vhd/resize", { path: abs(0, "disk path"), format: format(v["format"], "--format"), sizeBytes: s }, bar);
      out(!!v["json"], r, () => {
        console.log(`${r.disk.path}: ${formatSize(r.previousSize)} -> ${formatSize(r.disk.size)} (${r.method}${r.gptRelocated ? ", backup GPT moved to the new end" : ""}); grow or shrink the file system inside the guest`);
      });
      return 0;
    }
    case "merge": {
      const r = await streamed<MergeVhdResult>(api, "/v1/vhd/merge", { path: abs(0, "differencing disk"), format: format(v["format"], "--format"), keepChild: v["keep-child"] === true ? true : undefined }, bar);
      out(!!v["json"], r, () => console.log(`${r.child} merged into ${r.parent.path}; the child was ${r.childAfter}`));
      return 0;
    }
    case "compact": {
      const r = await streamed<CompactVhdResult>(api, "/v1/vhd/compact", { path: abs(0, "disk path"), format: format(v["format"], "--format") }, bar);
      out(!!v["json"], r, () => console.log(`${r.disk.path}: ${formatSize(r.fileSizeBefore)} -> ${formatSize(r.disk.fileSize)} (allocated ${formatSize(r.allocatedBefore)} -> ${formatSize(r.disk.allocatedSize)})`));
      return 0;
    }
  }
  throw new VmhostError("usage", "vhd new|get|convert|resize|merge|compact ...; run vmhost help");
}
