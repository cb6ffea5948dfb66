import { watch, type FSWatcher } from "node:fs";
import { open, stat } from "node:fs/promises";
import { cleanConsoleLines } from "./console-log.js";

/**
 * Follows a console log that QEMU appends to and emits complete lines as they arrive.
 * inotify wakes it at once; a slow poll covers events inotify can miss (rotation).
 * Survives copy-then-truncate rotation by starting over at 0 when the file shrinks.
 */
export class ConsoleWatcher {
  private offset = 0;
  private partial = "";
  private watcher?: FSWatcher;
  private poll?: NodeJS.Timeout;
  private reading = false;
  private again = false;
  lastOutputAt = Date.now();

  constructor(
    private readonly file: string,
    private readonly onLine: (line: string) => void,
  ) {}

  /** From the end of the file, or from an offset (where a just-started QEMU began writing, so no early line is missed). */
  async start(fromEnd: boolean | number): Promise<void> {
    if (typeof fromEnd === "number") this.offset = fromEnd;
    else if (fromEnd) this.offset = await stat(this.file).then((s) => s.size, () => 0);
    try {
      this.watcher = watch(this.file, () => void this.read());
      this.watcher.on("error", () => undefined);
    } catch {
      /* the poll still runs */
    }
    this.poll = setInterval(() => void this.read(), 1000);
    this.poll.unref();
    void this.read();
  }

  stop(): void {
    this.watcher?.close();
    if (this.poll) clearInterval(this.poll);
  }

  private async read(): Promise<void> {
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = true;
    try {
      do {
        this.again = false;
        const fh = await open(this.file, "r").catch(() => undefined);
        if (!fh) return;
        try {
          const { size } = await fh.stat();
          if (size < this.offset) this.offset = 0;
          if (size === this.offset) continue;
          const buf = Buffer.alloc(Math.min(size - this.offset, 1024 * 1024));
          const { bytesRead } = await fh.read(buf, 0, buf.length, this.offset);
          this.offset += bytesRead;
          this.lastOutputAt = Date.now();
          const text = this.partial + buf.subarray(0, bytesRead).toString("utf8");
          const cut = Math.max(text.lastIndexOf("\n"), text.lastIndexOf("\r"));
          this.partial = cut >= 0 ? text.slice(cut + 1) : text;
          // An unterminated line that is long or stale is still a line (prompts end without \n).
          if (this.partial.length > 4096) {
            for (const l of cleanConsoleLines(this.partial)) this.onLine(l);
            this.partial = "";
          }
          if (cut >= 0) for (const l of cleanConsoleLines(text.slice(0, cut))) this.onLine(l);
        } finally {
          await fh.close();
        }
      } while (this.again);
    } finally {
      this.reading = false;
    }
  }

  /** The text after the last newline: a prompt or a line still being written. */
  pendingText(): string {
    return cleanConsoleLines(this.partial).join(" ");
  }
}
