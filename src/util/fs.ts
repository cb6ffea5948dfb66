import { stat } from "node:fs/promises";

/** True when something exists at the path (a missing file is an answer, not an error). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
