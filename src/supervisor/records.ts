import { readFile, rm } from "node:fs/promises";
import { z } from "zod";
import type { VmHome } from "../home/vm-home.js";
import { writeFileAtomic } from "../util/atomic.js";
import { VmhostError } from "../util/errors.js";

/**
 * What a VM's QEMU is, persisted so a restarted supervisor can adopt it. Written BEFORE QEMU is
 * spawned (phase "starting", no pid yet: a service killed right after the spawn still finds the
 * QEMU through its pid file) and completed once QMP answers (phase "running").
 */
export const RuntimeRecord = z.object({
  phase: z.enum(["starting", "running"]).default("running"),
  pid: z.number().int().positive().optional(),
  /** /proc/PID/stat start time (clock ticks): a pid plus this survives pid reuse. */
  startTime: z.number().optional(),
  startedAt: z.string(),
  runDir: z.string(),
  accel: z.enum(["kvm", "tcg"]),
  accelReason: z.string().optional(),
  /**
   * A multi-step operation in progress on the running QEMU (the guest may be paused for it).
   * A service killed during it finishes or undoes it when it adopts the QEMU again.
   */
  operation: z
    .object({
      kind: z.enum(["save", "capture"]),
      since: z.string(),
      /** Where the machine state is being written (capture: the checkpoint's file). */
      file: z.string().optional(),
      /** The guest's state before the operation paused it. */
      wasRunning: z.boolean(),
    })
    .strict()
    .optional(),
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

async function readJson<T>(file: string, schema: z.ZodType<T, z.ZodTypeDef, unknown>): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new VmhostError("damaged", `${file} cannot be read: ${(err as Error).message}`, 500);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new VmhostError("damaged", `${file} is damaged: ${(err as Error).message}`, 500);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new VmhostError("damaged", `${file} is damaged: ${parsed.error.issues[0]?.message ?? "invalid"}`, 500);
  return parsed.data;
}

const json = (v: unknown) => JSON.stringify(v, null, 2) + "\n";

export const readRuntime = (h: VmHome) => readJson(h.runtime, RuntimeRecord);
export const writeRuntime = (h: VmHome, r: RuntimeRecord) => writeFileAtomic(h.runtime, json(r), 0o600);
export const clearRuntime = (h: VmHome) => rm(h.runtime, { force: true });
export const readStatus = async (h: VmHome) => (await readJson(h.status, StatusRecord)) ?? {};
export const writeStatus = (h: VmHome, s: StatusRecord) => writeFileAtomic(h.status, json(s), 0o600);
