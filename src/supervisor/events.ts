import { appendFile, readFile, rename, stat } from "node:fs/promises";
import { join } from "node:path";

export interface VmEvent {
  at: string;
  vm: string;
  type: string;
  message: string;
  data?: Record<string, unknown>;
}

const EVENTS_LIMIT = 512 * 1024;

/** Append-only event journal per VM (events.jsonl), bounded by keeping one previous file. */
export class EventJournal {
  constructor(private readonly vmDir: (name: string) => string) {}

  file(name: string): string {
    return join(this.vmDir(name), "events.jsonl");
  }

  async append(ev: VmEvent): Promise<void> {
    const f = this.file(ev.vm);
    try {
      if ((await stat(f)).size > EVENTS_LIMIT) await rename(f, `${f}.1`);
    } catch {
      /* first event */
    }
    await appendFile(f, JSON.stringify(ev) + "\n").catch(() => undefined);
  }

  async read(name: string): Promise<VmEvent[]> {
    const out: VmEvent[] = [];
    for (const f of [`${this.file(name)}.1`, this.file(name)]) {
      let text = "";
      try {
        text = await readFile(f, "utf8");
      } catch {
        continue;
      }
      for (const line of text.split("\n")) {
        if (!line.trim()) continue;
        try {
          out.push(JSON.parse(line) as VmEvent);
        } catch {
          /* a torn last line after a crash is skipped */
        }
      }
    }
    return out;
  }
}
