import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { link, mkdir, readdir, rm, stat } from "node:fs/promises";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { join, resolve } from "node:path";
import type { ConfigStore } from "../../model/index.js";
import { VmhostError, notFound } from "../../util/errors.js";

/**
 * The media folder (`$VMHOST_HOME/media`): ISOs, disk and floppy images uploaded over the API.
 * Remote callers can name host files only here. An upload is written beside its final name and
 * linked into place only once complete, so a half-sent file never appears under its name.
 */
export interface MediaFileView {
  name: string;
  path: string;
  bytes: number;
  modifiedAt: string;
}

export async function listMedia(dir: string): Promise<MediaFileView[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: MediaFileView[] = [];
  for (const name of names.sort()) {
    if (name.startsWith(".")) continue;
    const st = await stat(join(dir, name)).catch(() => undefined);
    if (st?.isFile()) out.push({ name, path: join(dir, name), bytes: st.size, modifiedAt: st.mtime.toISOString() });
  }
  return out;
}

/** Receives a stream into `dir` as a new file `name`; an existing file is refused (remove it first). */
export async function receiveFile(dir: string, name: string, data: Readable): Promise<MediaFileView> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const final = join(dir, name);
  if (await stat(final).then(() => true, () => false)) throw new VmhostError("exists", `${name} is in the media folder already; remove it first`, 409);
  const tmp = join(dir, `.${name}.${randomBytes(6).toString("hex")}.partial`);
  try {
    await pipeline(data, createWriteStream(tmp, { mode: 0o600, flags: "wx" }));
    // link(2) fails when the name was taken meanwhile: never overwrite another upload.
    await link(tmp, final).catch((err: NodeJS.ErrnoException) => {
      throw err.code === "EEXIST" ? new VmhostError("exists", `${name} is in the media folder already; remove it first`, 409) : err;
    });
  } finally {
    await rm(tmp, { force: true });
  }
  const st = await stat(final);
  return { name, path: final, bytes: st.size, modifiedAt: st.mtime.toISOString() };
}

/** Receives an upload into a private scratch file and returns its path (the caller removes it). */
export async function receiveScratch(dir: string, data: Readable): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `upload-${randomBytes(8).toString("hex")}`);
  try {
    await pipeline(data, createWriteStream(tmp, { mode: 0o600, flags: "wx" }));
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return tmp;
}

/** Deletes a media file unless a VM uses it (as a disk, DVD or floppy). */
export async function removeMedia(dir: string, name: string, store: ConfigStore): Promise<void> {
  const path = resolve(dir, name);
  if (!(await stat(path).then((s) => s.isFile(), () => false))) throw notFound(`media file "${name}"`);
  for (const l of await store.list()) {
    if (!l.ok) continue;
    const vm = l.config;
    const used = [...vm.hardDisks.map((d) => d.path), ...vm.dvdDrives.map((d) => d.path), vm.floppy?.path].some((p) => p && resolve(p) === path);
    if (used) throw new VmhostError("in-use", `${name} is used by VM "${vm.name}"; detach it first`, 409);
  }
  await rm(path);
}
