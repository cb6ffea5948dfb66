import { readFile } from "node:fs/promises";
import { z } from "zod";
import { writeFileAtomic } from "../../util/atomic.js";
import { Diagnosis } from "./types.js";

/** The VM's diagnosis.json (VmHome.diagnosis): the diagnosis of its last (or current) run. */
export const DiagnosisRecord = z
  .object({
    /** startedAt of the run it belongs to (runtime.json); a new start clears it. */
    startedAt: z.string(),
    diagnosis: Diagnosis.nullable(),
  })
  .strict();
export type DiagnosisRecord = z.infer<typeof DiagnosisRecord>;

/** The record, undefined when there is none; a damaged file is an error that names it. */
export async function readDiagnosisRecord(file: string): Promise<DiagnosisRecord | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return undefined;
  }
  let parsed: z.SafeParseReturnType<unknown, DiagnosisRecord>;
  try {
    parsed = DiagnosisRecord.safeParse(JSON.parse(text));
  } catch (err) {
    throw new Error(`${file} is damaged: ${(err as Error).message}`);
  }
  if (!parsed.success) throw new Error(`${file} is damaged: ${parsed.error.issues[0]?.message ?? "invalid"}`);
  return parsed.data;
}

/** What `show` prints: the current diagnosis or null; a damaged record becomes a diagnosis that names the file. */
export async function readDiagnosis(file: string): Promise<Diagnosis | null> {
  try {
    return (await readDiagnosisRecord(file))?.diagnosis ?? null;
  } catch (err) {
    return {
      id: "diagnosis-record-damaged",
      kind: "signature",
      title: (err as Error).message,
      explanation: "vmhost could not read the boot diagnosis it kept for this VM.",
      fix: `Remove ${file}; the next start makes a new one.`,
      at: new Date().toISOString(),
      evidence: [],
    };
  }
}

export function writeDiagnosisRecord(file: string, r: DiagnosisRecord): Promise<void> {
  return writeFileAtomic(file, JSON.stringify(r, null, 2) + "\n", 0o600);
}
