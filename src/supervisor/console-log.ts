import { open, readFile, stat, truncate } from "node:fs/promises";
import { writeFileAtomic } from "../util/atomic.js";

/** QEMU appends the serial console to this file (O_APPEND); vmhost keeps it bounded. */
export const CONSOLE_LOG_LIMIT = 1024 * 1024;

/**
 * Copy-then-truncate rotation: QEMU keeps its descriptor and, being O_APPEND, simply goes on
 * writing at the new end. One previous generation (.1) is kept.
 */
export async function rotateIfLarge(log: string, limit = CONSOLE_LOG_LIMIT): Promise<boolean> {
  let size: number;
  try {
    size = (await stat(log)).size;
  } catch {
    return false;
  }
  if (size <= limit) return false;
  const data = await readFile(log);
  await writeFileAtomic(`${log}.1`, data);
  await truncate(log, 0);
  return true;
}

/** The whole captured console (previous generation first). */
export async function readConsole(log: string): Promise<string> {
  const parts: string[] = [];
  for (const f of [`${log}.1`, log]) {
    try {
      parts.push(await readFile(f, "utf8"));
    } catch {
      /* absent */
    }
  }
  return parts.join("");
}

/** The last `n` non-empty console lines, with terminal control sequences removed. */
export async function consoleTail(log: string, n = 10, maxBytes = 64 * 1024): Promise<string[]> {
  let text = "";
  try {
    const fh = await open(log, "r");
    try {
      const { size } = await fh.stat();
      const start = Math.max(0, size - maxBytes);
      const buf = Buffer.alloc(size - start);
      await fh.read(buf, 0, buf.length, start);
      text = buf.toString("utf8");
    } finally {
      await fh.close();
    }
  } catch {
    return [];
  }
  if (text.trim() === "") {
    try {
      text = (await readFile(`${log}.1`, "utf8")).slice(-maxBytes);
    } catch {
      /* none */
    }
  }
  return cleanConsoleLines(text).slice(-n);
}

/** Removes the terminal control sequences firmware and shells print (cursor moves, modes). */
export function stripTerminalControls(text: string): string {
  // ESC c is the full reset SeaBIOS's serial console starts with.
  return text.replace(/\x1b\[[0-9;?=]*[A-Za-z]/g, "").replace(/\x1b[()][A-Za-z0-9]/g, "").replace(/\x1b[c78DEHM]/g, "");
}

export function cleanConsoleLines(text: string): string[] {
  return stripTerminalControls(text)
    .split(/\r?\n|\r/)
    .map((l) => l.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "").trimEnd())
    .filter((l) => l.trim() !== "");
}
