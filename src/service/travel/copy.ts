// Copying VM files into and out of an export: sparse (holes are skipped, not read, and ranges of
// zeros become holes, as `cp --sparse=always` makes them), hashed on the way (SHA-256 of the whole
// file content, what `sha256sum` prints; a hole is hashed as the zeros it reads as), with progress
// and cancellation. One pass over the source's data; a large file is hashed on a worker thread
// while it is read and written.
import { createHash } from "node:crypto";
import { open, type FileHandle } from "node:fs/promises";
import { Worker } from "node:worker_threads";
import { z } from "zod";
import { qemuImg } from "../../images/tools.js";
import { VmhostError } from "../../util/errors.js";

/** Bytes read per step. */
const CHUNK = 1024 * 1024;
/** Runs of zeros at least this long (and aligned to it) are left as holes: a qcow2 cluster, 16 file-system blocks. */
const HOLE = 64 * 1024;
const ZEROS = Buffer.alloc(HOLE);
const ZERO_CHUNK = Buffer.alloc(CHUNK);
/** Files smaller than this are read whole and hashed in line; asking for their holes (or a thread) costs more than it saves. */
const LARGE = 64 * 1024 * 1024;
/** Chunks handed to the hashing thread and not yet hashed, at most (memory held: this many MiB). */
const IN_FLIGHT = 8;

/** A byte range of a file; `hole`: unallocated, so it reads as zeros without being read. */
interface Extent {
  start: number;
  length: number;
  hole: boolean;
}

const MapEntry = z.object({ start: z.number(), length: z.number(), zero: z.boolean(), data: z.boolean() }).passthrough();

/**
 * The file's allocated ranges and holes, from `qemu-img map -f raw` (the file read as bytes,
 * whatever format it holds; for a plain file QEMU's file driver asks lseek SEEK_DATA/SEEK_HOLE),
 * clipped to the file's length. Only a range QEMU reports as unallocated and zero is a hole; when
 * the map cannot be had, the whole file is one range to read.
 */
async function extentsOf(path: string, size: number): Promise<Extent[]> {
  const whole = [{ start: 0, length: size, hole: false }];
  if (size < LARGE) return whole;
  let entries: z.infer<typeof MapEntry>[];
  try {
    entries = z.array(MapEntry).parse(JSON.parse(await qemuImg(["map", "-f", "raw", "--output=json", path])));
  } catch {
    return whole;
  }
  const out: Extent[] = [];
  let pos = 0;
  for (const e of entries) {
    if (e.start !== pos) return whole; // not a contiguous cover of the file: trust nothing of it
    const length = Math.min(e.length, size - pos);
    if (length <= 0) break;
    const hole = e.zero && !e.data;
    const last = out[out.length - 1];
    if (last && last.hole === hole) last.length += length;
    else out.push({ start: pos, length, hole });
    pos += length;
  }
  return pos === size ? out : whole;
}

/** Where the bytes of a file go to be hashed: in line, or on a worker thread (for large files). */
interface Sha256Sink {
  /** `chunk` is handed over: the caller does not touch it again. */
  data(chunk: Buffer): Promise<void>;
  zeros(length: number): Promise<void>;
  digest(): Promise<string>;
  close(): void;
}

function inlineSink(): Sha256Sink {
  const hash = createHash("sha256");
  return {
    data: async (chunk) => void hash.update(chunk),
    zeros: async (length) => {
      for (let done = 0; done < length; done += CHUNK) {
        hash.update(length - done >= CHUNK ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, length - done));
        // A hole of gigabytes takes seconds to hash: vmhostd must not spend them deaf.
        if (done % (16 * CHUNK) === 0) await new Promise((r) => setImmediate(r));
      }
    },
    digest: async () => hash.digest("hex"),
    close: () => undefined,
  };
}

/** SHA-256 on hash-worker.ts: chunks handed over (transferred, not copied), at most IN_FLIGHT unhashed. */
function workerSink(): Sha256Sink {
  const worker = new Worker(new URL("./hash-worker.js", import.meta.url));
  let pending = 0;
  let waiting: (() => void) | undefined;
  let digested: ((hex: string) => void) | undefined;
  let failure: Error | undefined;
  const wake = () => {
    const w = waiting;
    waiting = undefined;
    w?.();
  };
  worker.on("message", (m: { ack?: boolean; digest?: string }) => {
    if (m.digest !== undefined) digested?.(m.digest);
    else {
      pending--;
      wake();
    }
  });
  worker.on("error", (err) => {
    failure = err;
    wake();
  });
  const room = async () => {
    while (pending >= IN_FLIGHT && !failure) await new Promise<void>((r) => (waiting = r));
    if (failure) throw failure;
  };
  return {
    data: async (chunk) => {
      await room();
      pending++;
      // A Buffer of its own ArrayBuffer (allocUnsafeSlow), so handing it over detaches nothing else.
      worker.postMessage({ data: chunk.buffer, length: chunk.length }, [chunk.buffer as ArrayBuffer]);
    },
    zeros: async (length) => {
      await room();
      pending++;
      worker.postMessage({ zeros: length });
    },
    digest: async () => {
      while (pending > 0 && !failure) await new Promise<void>((r) => (waiting = r));
      if (failure) throw failure;
      return new Promise<string>((resolve) => {
        digested = resolve;
        worker.postMessage({ digest: true });
      });
    },
    close: () => void worker.terminate(),
  };
}

/**
 * Reads the file's data ranges in chunks (each a Buffer of its own when `fresh`), hands each to
 * `each`, and the holes to `hole`; returns the bytes covered (the file's size unless it shrank).
 */
async function walkFile(
  fh: FileHandle,
  path: string,
  size: number,
  opts: { signal: AbortSignal | undefined; what: string; fresh: boolean },
  each: (chunk: Buffer, at: number) => Promise<void>,
  hole: (at: number, length: number) => Promise<void>,
): Promise<number> {
  const shared = opts.fresh ? undefined : Buffer.allocUnsafe(CHUNK);
  let covered = 0;
  for (const extent of await extentsOf(path, size)) {
    aborted(opts.signal, opts.what);
    if (extent.hole) {
      await hole(extent.start, extent.length);
      covered += extent.length;
      continue;
    }
    const end = extent.start + extent.length;
    for (let pos = extent.start; pos < end; ) {
      aborted(opts.signal, opts.what);
      const buf = shared ?? Buffer.allocUnsafeSlow(CHUNK);
      const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, end - pos), pos);
      if (bytesRead === 0) return covered;
      await each(buf.subarray(0, bytesRead), pos);
      pos += bytesRead;
      covered += bytesRead;
    }
  }
  return covered;
}

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
 * Copies `src` to the new file `dst` (which must not exist): holes are not read, every 64 KiB
 * block that reads as zeros is not written, so both stay holes; the file gets the source's
 * length. The copy is fsynced. Returns the size, the SHA-256 of the content and the bytes written.
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
  const size = (await input.stat()).size;
  const large = size >= LARGE;
  const sink = large ? workerSink() : inlineSink();
  try {
    let written = 0;
    const out = output;
    const covered = await walkFile(
      input,
      src,
      size,
      { signal: opts.signal, what: `copying ${src}`, fresh: large },
      async (chunk, at) => {
        // Write the runs of non-zero blocks; leave the zero blocks as holes. Then hash (the chunk is handed over).
        let runStart = -1;
        const flush = async (until: number) => {
          await out.write(chunk, runStart, until - runStart, at + runStart);
          written += until - runStart;
          runStart = -1;
        };
        for (let off = 0; off < chunk.length; off += HOLE) {
          const end = Math.min(off + HOLE, chunk.length);
          const zero = end - off === HOLE ? chunk.subarray(off, end).equals(ZEROS) : chunk.subarray(off, end).every((b) => b === 0);
          if (!zero && runStart < 0) runStart = off;
          if (zero && runStart >= 0) await flush(off);
        }
        if (runStart >= 0) await flush(chunk.length);
        const done = at + chunk.length;
        await sink.data(chunk);
        opts.onBytes?.(done);
      },
      async (at, length) => {
        await sink.zeros(length);
        opts.onBytes?.(at + length);
      },
    );
    if (covered !== size) throw new VmhostError("copy-failed", `${src} ended after ${covered} of ${size} bytes while it was copied (was it changed meanwhile?)`, 500);
    await out.truncate(size);
    await out.sync();
    const sha256 = await sink.digest();
    if (opts.expectSha256 !== undefined && opts.expectSha256 !== sha256) throw new ChecksumMismatchError(src, opts.expectSha256, sha256);
    return { size, sha256, written };
  } finally {
    sink.close();
    await input.close();
    await output.close();
  }
}

/** SHA-256 (hex) and size of a file's content, with progress in bytes; holes are not read. Errors: `aborted`, the file system's. */
export async function sha256File(path: string, opts: Pick<CopyOptions, "onBytes" | "signal"> = {}): Promise<{ size: number; sha256: string }> {
  const fh = await open(path, "r");
  const size = (await fh.stat()).size;
  const large = size >= LARGE;
  const sink = large ? workerSink() : inlineSink();
  try {
    const covered = await walkFile(
      fh,
      path,
      size,
      { signal: opts.signal, what: `reading ${path}`, fresh: large },
      async (chunk, at) => {
        const done = at + chunk.length;
        await sink.data(chunk);
        opts.onBytes?.(done);
      },
      async (at, length) => {
        await sink.zeros(length);
        opts.onBytes?.(at + length);
      },
    );
    return { size: covered, sha256: await sink.digest() };
  } finally {
    sink.close();
    await fh.close();
  }
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
