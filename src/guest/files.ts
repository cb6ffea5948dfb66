import { z } from "zod";
import { GuestAgentError, type AgentCaller } from "./agent.js";

/** File access in the guest through qemu-ga's guest-file-* commands (paths are guest paths). */

const Handle = z.number().int().nonnegative();
const ReadReply = z.object({ count: z.number().int().nonnegative(), "buf-b64": z.string(), eof: z.boolean() }).passthrough();
const WriteReply = z.object({ count: z.number().int().nonnegative(), eof: z.boolean() }).passthrough();
const SeekReply = z.object({ position: z.number().int().nonnegative(), eof: z.boolean() }).passthrough();
const Ignored = z.unknown();

/** The guest said the path does not exist (qemu-ga reports strerror text). */
export function isNoSuchFile(err: unknown): boolean {
  return err instanceof GuestAgentError && /No such file or directory/i.test(err.message);
}

export function isDirectoryError(err: unknown): boolean {
  return err instanceof GuestAgentError && /Is a directory/i.test(err.message);
}

/** Largest chunk asked for per guest-file-read; qemu-ga answers it base64 encoded on one line. */
export const READ_CHUNK = 512 * 1024;
export const WRITE_CHUNK = 512 * 1024;

export class GuestFile {
  private constructor(
    private readonly agent: AgentCaller,
    readonly handle: number,
    readonly path: string,
  ) {}

  /** mode is fopen's: "r", "w", "a", "r+", ... */
  static async open(agent: AgentCaller, path: string, mode: string, timeoutMs = 10_000): Promise<GuestFile> {
    const handle = await agent.call("guest-file-open", { path, mode }, Handle, { timeoutMs });
    return new GuestFile(agent, handle, path);
  }

  async read(count = READ_CHUNK, timeoutMs = 30_000): Promise<{ data: Buffer; eof: boolean }> {
    const r = await this.agent.call("guest-file-read", { handle: this.handle, count }, ReadReply, { timeoutMs });
    // The guest says how much it read; believe only what the bytes show, and never more than asked.
    const data = Buffer.from(r["buf-b64"], "base64");
    if (data.length > count || data.length !== r.count) {
      throw new GuestAgentError("guest-file-read", "Protocol", `the guest returned ${data.length} bytes, said ${r.count}, for ${count} asked`);
    }
    return { data, eof: r.eof || data.length === 0 };
  }

  /** Writes all of data (repeating on short writes). */
  async write(data: Buffer, timeoutMs = 60_000): Promise<void> {
    let off = 0;
    while (off < data.length) {
      const part = data.subarray(off, off + WRITE_CHUNK);
      const r = await this.agent.call("guest-file-write", { handle: this.handle, "buf-b64": part.toString("base64") }, WriteReply, { timeoutMs });
      if (r.count === 0 || r.count > part.length) throw new GuestAgentError("guest-file-write", "Protocol", `the guest wrote ${r.count} of ${part.length} bytes`);
      off += r.count;
    }
  }

  async size(): Promise<number> {
    const r = await this.agent.call("guest-file-seek", { handle: this.handle, offset: 0, whence: "end" }, SeekReply);
    return r.position;
  }

  async flush(): Promise<void> {
    await this.agent.call("guest-file-flush", { handle: this.handle }, Ignored, { timeoutMs: 60_000 });
  }

  async close(): Promise<void> {
    await this.agent.call("guest-file-close", { handle: this.handle }, Ignored, { timeoutMs: 30_000 });
  }
}

export class GuestFileTooLarge extends Error {
  constructor(path: string, limit: number) {
    super(`${path} in the guest is larger than ${limit} bytes`);
    this.name = "GuestFileTooLarge";
  }
}

/** The whole file, or undefined when it does not exist; refuses files larger than maxBytes. */
export async function readGuestFile(agent: AgentCaller, path: string, maxBytes: number): Promise<Buffer | undefined> {
  let f: GuestFile;
  try {
    f = await GuestFile.open(agent, path, "r");
  } catch (err) {
    if (isNoSuchFile(err)) return undefined;
    throw err;
  }
  try {
    const parts: Buffer[] = [];
    let total = 0;
    for (;;) {
      const { data, eof } = await f.read(Math.min(READ_CHUNK, maxBytes - total + 1));
      total += data.length;
      if (total > maxBytes) throw new GuestFileTooLarge(path, maxBytes);
      parts.push(data);
      if (eof) break;
    }
    return Buffer.concat(parts);
  } finally {
    await f.close().catch(() => undefined);
  }
}

/** Replace the file's content (fopen "w": created 0666 & ~umask by qemu-ga, or truncated). */
export async function writeGuestFile(agent: AgentCaller, path: string, data: Buffer): Promise<void> {
  const f = await GuestFile.open(agent, path, "w");
  try {
    await f.write(data);
    await f.flush();
  } finally {
    await f.close().catch(() => undefined);
  }
}
