// The exported VM as files: the folder layout (after Hyper-V's Export-VM), the description of
// what is where, and the manifest of checksums. Read and written by export.ts and import.ts.
import { readdir, readFile, stat } from "node:fs/promises";
import { join, posix, resolve, sep } from "node:path";
import { z } from "zod";
import { CheckpointTree } from "../../checkpoints/tree.js";
import { DiskFormat, VmConfig, VmState } from "../../model/schema.js";
import { VmhostError } from "../../util/errors.js";
import { sha256File } from "./copy.js";

/**
 * An export, as Hyper-V lays one out (Export-VM; "Virtual Machines", "Virtual Hard Disks" and
 * "Snapshots" are its folder names):
 *
 *   <VM name>/
 *     Virtual Machines/<id>.json       the description below: configuration, checkpoint tree,
 *                                       every image and its backing file, what else is where
 *     Virtual Machines/<id>.nvram.fd   Gen2: the UEFI variable store
 *     Virtual Machines/<id>.vmrs       the memory and device state, when the VM was captured
 *                                       with it (Hyper-V's .vmrs) or was Saved
 *     Virtual Machines/<id>.firmware-pending.json   NVRAM changes still pending
 *     Virtual Hard Disks/               the current disks and the parents they read
 *     Snapshots/<checkpoint id>/        one folder per checkpoint: vm.json, nvram.fd, memory.bin,
 *                                       firmware-pending.json and the images it keeps
 *     manifest.json                     every other file with its size and SHA-256
 *
 * Every path inside is relative to the export's folder, written with "/"; qcow2 images name their
 * backing files relative to their own folder (QEMU resolves them so), so the folder can move.
 */
export const EXPORT_FORMAT_VERSION = 1;
export const VMS_DIR = "Virtual Machines";
export const DISKS_DIR = "Virtual Hard Disks";
export const SNAPSHOTS_DIR = "Snapshots";
export const MANIFEST = "manifest.json";

/** A path inside the export: relative, "/"-separated, never leaving the folder. */
export const RelPath = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => isSafeRelPath(p), { message: "must be a relative path inside the export (no '..', no leading '/')" });

export function isSafeRelPath(p: string): boolean {
  if (p.includes("\0") || p.includes("\\") || p.startsWith("/")) return false;
  const n = posix.normalize(p);
  return n === p && n !== "." && !n.startsWith("../") && n !== "..";
}

/** Hyper-V's Export-VM -CaptureLiveState values. */
export const CaptureLiveState = z.enum(["CaptureSavedState", "CaptureDataConsistentState", "CaptureCrashConsistentState"]);
export type CaptureLiveState = z.infer<typeof CaptureLiveState>;

/** One image file of the export and the image it is an overlay on (its backing file). */
export const PackageImage = z
  .object({
    path: RelPath,
    format: DiskFormat,
    backing: z.object({ path: RelPath, format: DiskFormat }).strict().nullable(),
    /** Who keeps it: "now" (the VM's current disks), a checkpoint's id, or "parent" (read by another image only). */
    owner: z.union([z.literal("now"), z.literal("parent"), z.string().uuid()]),
  })
  .strict();
export type PackageImage = z.infer<typeof PackageImage>;

export const PackageCheckpoint = z
  .object({
    id: z.string().uuid(),
    /** Its configuration (vm.json, disk paths relative to the export). */
    config: RelPath,
    nvram: RelPath.nullable(),
    memory: RelPath.nullable(),
    firmwarePending: RelPath.nullable(),
  })
  .strict();
export type PackageCheckpoint = z.infer<typeof PackageCheckpoint>;

export const ExportDescription = z
  .object({
    formatVersion: z.literal(EXPORT_FORMAT_VERSION),
    kind: z.literal("vmhost-export"),
    exportedAt: z.string(),
    exportedFrom: z.object({ hostname: z.string(), vmhostHome: z.string() }).strict(),
    /** How the VM's state was taken: the state it was in, and for a running VM the capture used. */
    capture: z.object({ state: VmState, liveState: CaptureLiveState.nullable(), note: z.string() }).strict(),
    /** The configuration; disk paths relative to the export. */
    config: VmConfig,
    /** The checkpoint tree; image paths relative to the export. */
    tree: CheckpointTree,
    images: z.array(PackageImage),
    checkpoints: z.array(PackageCheckpoint),
    nvram: RelPath.nullable(),
    /** Memory and device state: the imported VM is Saved and resumes from it on start. */
    savedState: RelPath.nullable(),
    firmwarePending: RelPath.nullable(),
  })
  .strict();
export type ExportDescription = z.infer<typeof ExportDescription>;

export const ManifestEntry = z.object({ path: RelPath, size: z.number().int().min(0), sha256: z.string().regex(/^[0-9a-f]{64}$/) }).strict();
export type ManifestEntry = z.infer<typeof ManifestEntry>;

export const Manifest = z
  .object({
    formatVersion: z.literal(EXPORT_FORMAT_VERSION),
    algorithm: z.literal("sha256"),
    /** Every file of the export except this one. */
    files: z.array(ManifestEntry),
  })
  .strict();
export type Manifest = z.infer<typeof Manifest>;

/** The absolute path of `rel` inside the export folder `root` (checked: never outside it). */
export function inPackage(root: string, rel: string): string {
  if (!isSafeRelPath(rel)) throw new VmhostError("bad-export", `the export names the path ${JSON.stringify(rel)}, which is not inside its folder`, 422);
  const abs = resolve(root, ...rel.split("/"));
  if (!abs.startsWith(root.endsWith(sep) ? root : root + sep)) throw new VmhostError("bad-export", `the export names ${rel}, which leads outside its folder`, 422);
  return abs;
}

/** The folder name an export of VM `name` gets: the name, unless it cannot be a file name (then the id). */
export function exportFolderName(name: string, id: string): string {
  const clean = name.replace(/\//g, "_");
  if (clean === "." || clean === ".." || Buffer.byteLength(clean) > 200 || clean.startsWith(".")) return id;
  return clean;
}

/** A read export: where it is, its description and manifest. */
export interface ExportPackage {
  root: string;
  descriptionPath: string;
  description: ExportDescription;
  manifest: Manifest;
}

/**
 * Reads the export at `dir`: the export's own folder (it holds "Virtual Machines"), or a folder
 * holding exactly one export. Errors: `not-found`, `bad-export` (422) naming the file and what is
 * wrong with it.
 */
export async function readPackage(dir: string): Promise<ExportPackage> {
  let root = resolve(dir);
  const isExport = async (d: string) => (await stat(join(d, VMS_DIR)).catch(() => undefined))?.isDirectory() === true;
  if (!(await stat(root).catch(() => undefined))?.isDirectory()) throw new VmhostError("not-found", `${root} is not a folder`, 404);
  if (!(await isExport(root))) {
    const subs: string[] = [];
    for (const e of await readdir(root, { withFileTypes: true })) if (e.isDirectory() && !e.name.startsWith(".") && (await isExport(join(root, e.name)))) subs.push(e.name);
    if (subs.length !== 1) {
      throw new VmhostError("bad-export", `${root} is not an exported VM (no "${VMS_DIR}" folder)${subs.length > 1 ? `; it holds ${subs.length} exports (${subs.join(", ")}): name one of them` : ""}`, 422);
    }
    root = join(root, subs[0]!);
  }
  const jsons = (await readdir(join(root, VMS_DIR))).filter((f) => /^[0-9a-f-]{36}\.json$/.test(f));
  if (jsons.length !== 1) throw new VmhostError("bad-export", `${join(root, VMS_DIR)} holds ${jsons.length} VM descriptions (<id>.json); an export holds one`, 422);
  const descriptionPath = join(root, VMS_DIR, jsons[0]!);
  const description = parseJsonFile(descriptionPath, await readFile(descriptionPath, "utf8"), ExportDescription);
  const manifestPath = join(root, MANIFEST);
  const manifestText = await readFile(manifestPath, "utf8").catch(() => {
    throw new VmhostError("bad-export", `${manifestPath} is missing: the export is incomplete (an interrupted export leaves no manifest); export the VM again`, 422);
  });
  const manifest = parseJsonFile(manifestPath, manifestText, Manifest);
  return { root, descriptionPath, description, manifest };
}

function parseJsonFile<S extends z.ZodTypeAny>(file: string, text: string, schema: S): z.output<S> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new VmhostError("bad-export", `${file} is not valid JSON: ${(err as Error).message}`, 422);
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0];
    throw new VmhostError("bad-export", `${file} is not a vmhost export description: ${i ? `${i.path.join(".") || "(top)"}: ${i.message}` : "invalid"}`, 422);
  }
  return r.data;
}

/** What the manifest check found wrong with one file. */
export interface ManifestProblem {
  path: string;
  problem: "missing" | "size" | "checksum" | "unlisted";
  message: string;
}

/**
 * Checks every file the manifest lists (size, then SHA-256) and that every file the description
 * names is listed. Progress in bytes over all listed files. Returns the problems (none: intact).
 */
export async function verifyManifest(pkg: ExportPackage, opts: { onProgress?: (fraction: number, what: string) => void; signal?: AbortSignal } = {}): Promise<ManifestProblem[]> {
  const problems: ManifestProblem[] = [];
  const listed = new Set(pkg.manifest.files.map((f) => f.path));
  for (const rel of referencedFiles(pkg.description)) {
    if (!listed.has(rel)) problems.push({ path: rel, problem: "unlisted", message: `${rel} is named by the export but not listed in its manifest, so it cannot be verified` });
  }
  const total = pkg.manifest.files.reduce((a, f) => a + f.size, 0);
  let done = 0;
  for (const f of pkg.manifest.files) {
    const abs = inPackage(pkg.root, f.path);
    const st = await stat(abs).catch(() => undefined);
    if (!st?.isFile()) {
      problems.push({ path: f.path, problem: "missing", message: `${f.path} is missing from the export` });
      done += f.size;
      continue;
    }
    if (st.size !== f.size) {
      problems.push({ path: f.path, problem: "size", message: `${f.path} has ${st.size} bytes, the manifest says ${f.size}` });
      done += f.size;
      continue;
    }
    const base = done;
    const { sha256 } = await sha256File(abs, { signal: opts.signal, onBytes: (b) => opts.onProgress?.(total ? (base + b) / total : 1, `verifying ${f.path}`) });
    done += f.size;
    if (sha256 !== f.sha256) problems.push({ path: f.path, problem: "checksum", message: `${f.path}: SHA-256 ${sha256}, the manifest says ${f.sha256}` });
  }
  opts.onProgress?.(1, "verified");
  return problems;
}

/** Every file the description names (its own file excepted), each once. */
export function referencedFiles(d: ExportDescription): string[] {
  const out = new Set<string>();
  for (const i of d.images) out.add(i.path);
  for (const c of d.checkpoints) for (const p of [c.config, c.nvram, c.memory, c.firmwarePending]) if (p) out.add(p);
  for (const p of [d.nvram, d.savedState, d.firmwarePending]) if (p) out.add(p);
  return [...out];
}

/** The manifest entry of `rel`; `bad-export` when the manifest does not list it. */
export function manifestEntry(pkg: ExportPackage, rel: string): ManifestEntry {
  const e = pkg.manifest.files.find((f) => f.path === rel);
  if (!e) throw new VmhostError("bad-export", `${rel} is not listed in the export's manifest`, 422);
  return e;
}

/** `rel` (a "/"-separated path inside the export) as seen from the folder of `fromRel`: what a qcow2 there records as its backing file. */
export function relativeBacking(fromRel: string, toRel: string): string {
  return posix.relative(posix.dirname(fromRel), toRel);
}
