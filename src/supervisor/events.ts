import { appendFile, readFile, rename, stat } from "node:fs/promises";
import type { VmHome } from "../home/vm-home.js";

/** One entry of a VM's event journal (`events.jsonl`, one JSON object per line). */
export interface VmEvent {
  /** ISO 8601 time. */
  at: string;
  /** The VM's id (its journal is in its folder) and its name when the event happened. */
  vmId: string;
  vm: string;
  /** A stable, kebab-case type: "started", "state", "checkpoint-created", ... */
  type: string;
  message: string;
  data?: Record<string, unknown>;
}

const EVENTS_LIMIT = 512 * 1024;

/** Append-only event journal per VM, bounded by keeping one previous file (`events.jsonl.1`). */
export class EventJournal {
  async append(home: VmHome, ev: VmEvent): Promise<void> {
    const f = home.events;
    try {
      if ((await stat(f)).size > EVENTS_LIMIT) await rename(f, `${f}.1`);
    } catch {
      /* first event */
    }
    await appendFile(f, JSON.stringify(ev) + "\n", { mode: 0o600 }).catch(() => undefined);
  }

  async read(home: VmHome): Promise<VmEvent[]> {
    const out: VmEvent[] = [];
    for (const f of [`${home.events}.1`, home.events]) {
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
