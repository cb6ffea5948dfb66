// Copying VM files into and out of an export: sparse (ranges of zeros become holes, as
// `cp --sparse=always` makes them), hashed on the way (SHA-256 of the whole file content, what
// `sha256sum` prints), with progress and cancellation. One pass over the source.
import { createHash } from "node:crypto";
import { open, stat } from "node:fs/promises";
import { VmhostError } from "../../util/errors.js";

/** Bytes read per step. */
const CHUNK = 1024 * 1024;
/** Runs of zeros at least this long (and aligned to it) are left as holes: a qcow2 cluster, 16 file-system blocks. */
const HOLE = 64 * 1024;
const ZEROS = Buffer.alloc(HOLE);

export interface CopyOptions {
  /** Bytes of this file done so far (monotonic), after each step. */
  onBytes?: (done: number) => void;
  signal?: AbortSignal;
  /** The SHA-256 (hex) the content must have; a mismatch fails the copy (the caller removes the target). */
  expectSha256?: string;
  /** Mode of the new file (default 0600: it holds a guest's data). */
  mode?: number;
}

export interface CopyResult {
  size: number;
  sha256: string;
  /** Bytes written (the rest are holes). */
  written: number;
}

/** A copy whose content does not have the SHA-256 the manifest says (code "checksum-mismatch"). */
export class ChecksumMismatchError extends VmhostError {
  constructor(
    readonly file: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super("checksum-mismatch", `${file}: its SHA-256 is ${actual}, but the manifest says ${expected}: the file was changed or damaged after the export; export the VM again`, 422);
    this.name = "ChecksumMismatchError";
  }
}

function aborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new VmhostError("aborted", `${what} was cancelled`, 409);
}

/**
 * Copies `src` to the new file `dst` (which must not exist): every 64 KiB block that reads as
 * zeros is skipped, so it stays a hole; the file gets the source's length. The copy is fsynced.
 * Returns the size, the SHA-256 of the content and the bytes written.
 * Errors: `exists` (409) when `dst` exists, `checksum-mismatch` (ChecksumMismatchError) with
 * `expectSha256`, `aborted`, and the file system's own.
 */
export async function copySparse(src: string, dst: string, opts: CopyOptions = {}): Promise<CopyResult> {
  aborted(opts.signal, `copying ${src}`);
  const input = await open(src, "r");
  let output;
  try {
    output = await open(dst, "wx", opts.mode ?? 0o600);
  } catch (err) {
    await input.close();
    if ((err as NodeJS.ErrnoException).code === "EEXIST") throw new VmhostError("exists", `${dst} already exists; refusing to overwrite it`, 409);
    throw err;
  }
  try {
    const size = (await input.stat()).size;
    const hash = createHash("sha256");
    const buf = Buffer.allocUnsafe(CHUNK);
    let pos = 0;
    let written = 0;
    while (pos < size) {
      aborted(opts.signal, `copying ${src}`);
      const { bytesRead } = await input.read(buf, 0, Math.min(CHUNK, size - pos), pos);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      hash.update(chunk);
      // Write the runs of non-zero blocks; leave the zero blocks as holes.
      let runStart = -1;
      for (let off = 0; off < bytesRead; off += HOLE) {
        const end = Math.min(off + HOLE, bytesRead);
        const zero = end - off === HOLE ? chunk.subarray(off, end).equals(ZEROS) : chunk.subarray(off, end).every((b) => b === 0);
        if (!zero && runStart < 0) runStart = off;
        if (zero && runStart >= 0) {
          await output.write(chunk, runStart, off - runStart, pos + runStart);
          written += off - runStart;
          runStart = -1;
        }
      }
      if (runStart >= 0) {
        await output.write(chunk, runStart, bytesRead - runStart, pos + runStart);
        written += bytesRead - runStart;
      }
      pos += bytesRead;
      opts.onBytes?.(pos);
    }
    if (pos !== size) throw new VmhostError("copy-failed", `${src} ended after ${pos} of ${size} bytes while it was copied (was it changed meanwhile?)`, 500);
    await output.truncate(size);
    await output.sync();
    const sha256 = hash.digest("hex");
    if (opts.expectSha256 !== undefined && opts.expectSha256 !== sha256) throw new ChecksumMismatchError(src, opts.expectSha256, sha256);
    return { size, sha256, written };
  } finally {
    await input.close();
    await output.close();
  }
}

/** SHA-256 (hex) and size of a file's content, with progress in bytes. Errors: `aborted`, the file system's. */
export async function sha256File(path: string, opts: Pick<CopyOptions, "onBytes" | "signal"> = {}): Promise<{ size: number; sha256: string }> {
  const fh = await open(path, "r");
  try {
    const size = (await fh.stat()).size;
    const hash = createHash("sha256");
    const buf = Buffer.allocUnsafe(CHUNK);
    let pos = 0;
    while (pos < size) {
      aborted(opts.signal, `reading ${path}`);
      const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, size - pos), pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
      opts.onBytes?.(pos);
    }
    return { size: pos, sha256: hash.digest("hex") };
  } finally {
    await fh.close();
  }
}

/** Bytes a file occupies on the host (st_blocks * 512), for reports. */
export async function allocatedBytes(path: string): Promise<number> {
  const st = await stat(path);
  return st.blocks * 512;
}

/**
 * Progress over several files as one fraction: `total` bytes in all, `file(name, size)` returns
 * the per-file callback. Calls `report(fraction, what)` (0..1, never decreasing).
 */
export class ByteProgress {
  private done = 0;
  private last = -1;
  constructor(
    private readonly total: number,
    private readonly report?: (fraction: number, what: string) => void,
  ) {}

  file(what: string): (bytes: number) => void {
    const base = this.done;
    return (bytes) => {
      this.done = base + bytes;
      const f = this.total > 0 ? Math.min(1, this.done / this.total) : 1;
      if (f > this.last) {
        this.last = f;
        this.report?.(f, what);
      }
    };
  }

  /** Marks `size` bytes done without reading them (a file linked rather than copied). */
  skip(size: number, what: string): void {
    this.file(what)(size);
  }
}
