import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { Stream } from "./routes-guest.js";
import { parseBody, vmRoute, type Route } from "./validate.js";
import type { VmHost } from "./vmhost.js";

/** API routes of checkpoints (Checkpoint-VM, Get-VMSnapshot, Restore-, Remove-, Rename-VMSnapshot). */
export const CheckpointSchemas = {
  create: z.object({ name: z.string().min(1).max(400).optional() }).strict(),
  apply: z.object({ checkpoint: z.string().min(1), checkpointCurrent: z.boolean().default(false) }).strict(),
  remove: z.object({ checkpoint: z.string().min(1), subtree: z.boolean().default(false) }).strict(),
  rename: z.object({ checkpoint: z.string().min(1), name: z.string().min(1).max(400) }).strict(),
};

export const checkpointRoutes: Route<VmHost>[] = [
  ["GET", vmRoute("checkpoints"), (m, [n]) => m.checkpoints.list(n!)],
  ["POST", vmRoute("checkpoints"), (m, [n], b) => m.checkpoints.create(n!, parseBody(CheckpointSchemas.create, b))],
  [
    "POST",
    vmRoute("checkpoints/rename"),
    (m, [n], b) => {
      const r = parseBody(CheckpointSchemas.rename, b);
      return m.checkpoints.rename(n!, r.checkpoint, r.name);
    },
  ],
];

/** apply and remove stream progress lines (NDJSON) and end with the result; false when the request is not one of them. */
export async function handleCheckpointStream(m: VmHost, req: IncomingMessage, res: ServerResponse, url: URL, readBody: (r: IncomingMessage) => Promise<unknown>): Promise<boolean> {
  const apply = req.method === "POST" ? vmRoute("checkpoints/apply").exec(url.pathname) : null;
  const remove = req.method === "POST" ? vmRoute("checkpoints/remove").exec(url.pathname) : null;
  if (!apply && !remove) return false;
  const s = new Stream(res);
  try {
    const name = decodeURIComponent((apply ?? remove)![1]!);
    let lastAt = 0;
    const progress = (fraction: number, what: string) => {
      const now = Date.now();
      if (fraction < 1 && now - lastAt < 200) return;
      lastAt = now;
      s.line({ type: "progress", fraction, what });
    };
    if (apply) {
      const r = parseBody(CheckpointSchemas.apply, await readBody(req));
      s.line({ type: "result", result: await m.checkpoints.apply(name, r.checkpoint, { checkpointCurrent: r.checkpointCurrent }) });
    } else {
      const r = parseBody(CheckpointSchemas.remove, await readBody(req));
      s.line({ type: "result", result: await m.checkpoints.remove(name, r.checkpoint, { subtree: r.subtree }, progress) });
    }
    s.end();
  } catch (err) {
    s.fail(err);
  }
  return true;
}
