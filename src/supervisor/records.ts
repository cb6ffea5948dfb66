import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../util/atomic.js";

/** What a running VM's QEMU is, persisted so a restarted supervisor can adopt it. */
export const RuntimeRecord = z.object({
  pid: z.number().int().positive(),
  startTime: z.number(),
  startedAt: z.string(),
  runDir: z.string(),
  accel: z.enum(["kvm", "tcg"]),
  accelReason: z.string().optional(),
});
export type RuntimeRecord = z.infer<typeof RuntimeRecord>;

export const ExitRecord = z.object({
  at: z.string(),
  reason: z.string(),
  consoleTail: z.array(z.string()),
});
export type ExitRecord = z.infer<typeof ExitRecord>;

/** The last way the VM stopped; kept after QEMU is gone. */
export const StatusRecord = z.object({ lastExit: ExitRecord.optional() });
export type StatusRecord = z.infer<typeof StatusRecord>;

export interface VmFiles {
  dir: string;
  runtime: string;
  status: string;
  consoleLog: string;
  qemuLog: string;
  savedState: string;
  nvram: string;
}

export function vmFiles(vmDir: string): VmFiles {
  return {
    dir: vmDir,
    runtime: join(vmDir, "runtime.json"),
    status: join(vmDir, "status.json"),
    consoleLog: join(vmDir, "console.log"),
    qemuLog: join(vmDir, "qemu.log"),
    savedState: join(vmDir, "saved-state.bin"),
    nvram: join(vmDir, "nvram.fd"),
  };
}

async function readJson<T>(file: string, schema: z.ZodType<T>): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return undefined;
  }
  const parsed = schema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new Error(`${file} is damaged: ${parsed.error.issues[0]?.message ?? "invalid"}`);
  return parsed.data;
}

export const readRuntime = (f: VmFiles) => readJson(f.runtime, RuntimeRecord);
export const writeRuntime = (f: VmFiles, r: RuntimeRecord) => writeFileAtomic(f.runtime, JSON.stringify(r, null, 2) + "\n");
export const clearRuntime = (f: VmFiles) => rm(f.runtime, { force: true });
export const readStatus = async (f: VmFiles) => (await readJson(f.status, StatusRecord)) ?? {};
export const writeStatus = (f: VmFiles, s: StatusRecord) => writeFileAtomic(f.status, JSON.stringify(s, null, 2) + "\n");
