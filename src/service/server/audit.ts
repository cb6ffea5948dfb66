import { appendFile, chmod, open, readFile } from "node:fs/promises";
import type { AuditEntry } from "../../api/views.js";

/**
 * The audit log: one JSON line per change (who, what, when, result), appended to
 * `$VMHOST_HOME/host/audit.log`, mode 0600. Every route whose contract entry has `change: true`
 * is written here, also when it was refused (result "denied") or failed ("error").
 */
export class AuditLog {
  private chain: Promise<void> = Promise.resolve();
  private ready = false;

  constructor(readonly file: string) {}

  /** Appends an entry; entries are written in the order they are given. Never throws: a failure is logged. */
  append(entry: AuditEntry, log: (msg: string) => void = () => undefined): Promise<void> {
    const line = JSON.stringify(entry) + "\n";
    this.chain = this.chain
      .then(async () => {
        if (!this.ready) {
          const fh = await open(this.file, "a", 0o600);
          await fh.close();
          await chmod(this.file, 0o600);
          this.ready = true;
        }
        await appendFile(this.file, line, { mode: 0o600 });
      })
      .catch((err: Error) => log(`audit log ${this.file}: ${err.message}`));
    return this.chain;
  }

  /** The last `limit` entries, oldest first. A damaged line is skipped. */
  async read(limit = 1000): Promise<AuditEntry[]> {
    await this.chain;
    const text = await readFile(this.file, "utf8").catch(() => "");
    const out: AuditEntry[] = [];
    for (const l of text.split("\n").slice(-limit - 1)) {
      if (!l.trim()) continue;
      try {
        out.push(JSON.parse(l) as AuditEntry);
      } catch {
        /* a torn last line after a crash */
      }
    }
    return out.slice(-limit);
  }
}
