import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import type { VmEvent } from "../supervisor/events.js";
import { VmhostError } from "../util/errors.js";
import { toVmhostError } from "./integration.js";
import type { VmHost } from "./vmhost.js";
import { parseBody, vmRoute, type Route } from "./validate.js";

/** API routes of the integration services, and the streaming ones (copy-file progress, events --follow). */

export const GuestSchemas = {
  integration: z.object({ service: z.string().min(1).max(64), enabled: z.boolean() }).strict(),
  kvpSet: z.object({ key: z.string().max(4096), value: z.string().max(16384) }).strict(),
  kvpRemove: z.object({ key: z.string().max(4096) }).strict(),
  freeze: z.object({ timeoutSeconds: z.number().positive().max(300).optional() }).strict(),
  copyFile: z
    .object({
      source: z.string().min(1).max(4096),
      destination: z.string().min(1).max(4096),
      createFullPath: z.boolean().default(false),
      force: z.boolean().default(false),
    })
    .strict(),
};

const parse = parseBody;
const vm = vmRoute;

export const guestRoutes: Route<VmHost>[] = [
  ["GET", vm("integration"), (m, [n]) => m.integration.list(n!)],
  [
    "POST",
    vm("integration"),
    (m, [n], b) => {
      const r = parse(GuestSchemas.integration, b);
      return m.integration.setEnabled(n!, r.service, r.enabled);
    },
  ],
  ["GET", vm("kvp"), (m, [n]) => m.integration.kvpGet(n!)],
  ["GET", vm("kvp/(intrinsic|guest|external)"), (m, [n, pool]) => m.integration.kvpGet(n!, pool as "intrinsic" | "guest" | "external")],
  [
    "POST",
    vm("kvp"),
    (m, [n], b) => {
      const r = parse(GuestSchemas.kvpSet, b);
      return m.integration.kvpSet(n!, r.key, r.value);
    },
  ],
  ["POST", vm("kvp/remove"), (m, [n], b) => m.integration.kvpRemove(n!, parse(GuestSchemas.kvpRemove, b).key)],
  ["GET", vm("vss"), (m, [n]) => m.integration.vssStatus(n!)],
  [
    "POST",
    vm("vss/freeze"),
    (m, [n], b) => {
      const t = parse(GuestSchemas.freeze, b).timeoutSeconds;
      return m.integration.freeze(n!, t === undefined ? undefined : t * 1000);
    },
  ],
  ["POST", vm("vss/thaw"), (m, [n]) => m.integration.thaw(n!)],
];

type BodyReader = (req: IncomingMessage) => Promise<unknown>;

/** One NDJSON stream: the head is sent with the first line, so an early failure is still a plain error reply. */
export class Stream {
  private started = false;
  constructor(private readonly res: ServerResponse) {}

  line(obj: unknown): void {
    if (!this.started) {
      this.started = true;
      this.res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
    }
    this.res.write(JSON.stringify(obj) + "\n");
  }

  fail(err: unknown): void {
    const e0 = toVmhostError(err);
    const e = e0 instanceof VmhostError ? e0 : new VmhostError("internal", (e0 as Error).message ?? String(e0), 500);
    const error = { code: e.code, message: e.message };
    if (this.started) {
      this.line({ type: "error", error });
      this.res.end();
      return;
    }
    const body = JSON.stringify({ error });
    this.res.writeHead(e.status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    this.res.end(body);
  }

  end(): void {
    if (!this.started) this.line({ type: "end" });
    this.res.end();
  }
}

/** Handles the streaming routes; false when the request is not one of them. */
export async function handleGuestStream(m: VmHost, req: IncomingMessage, res: ServerResponse, url: URL, readBody: BodyReader): Promise<boolean> {
  const copy = req.method === "POST" ? vm("copy-file").exec(url.pathname) : null;
  const follow = req.method === "GET" ? vm("events/follow").exec(url.pathname) : null;
  if (!copy && !follow) return false;
  const name = decodeURIComponent((copy ?? follow)![1]!);
  const s = new Stream(res);
  try {
    if (copy) {
      const r = parse(GuestSchemas.copyFile, await readBody(req));
      let lastAt = 0;
      const result = await m.integration.copyFile(name, r, (done, total) => {
        const now = Date.now();
        if (done !== total && now - lastAt < 200) return;
        lastAt = now;
        s.line({ type: "progress", done, total });
      });
      s.line({ type: "result", result });
      s.end();
    } else {
      await followEvents(m, name, s, req, res);
    }
  } catch (err) {
    s.fail(err);
  }
  return true;
}

/** The journal so far, then each new event as it happens, until the client goes away. */
async function followEvents(m: VmHost, name: string, s: Stream, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const vmId = (await m.vms.get(name)).id;
  const live: VmEvent[] = [];
  let backlogDone = false;
  const onEvent = (ev: VmEvent) => {
    if (ev.vmId !== vmId) return;
    if (backlogDone) s.line({ type: "event", event: ev });
    else live.push(ev);
  };
  m.supervisor.on("vm-event", onEvent);
  const stop = () => m.supervisor.off("vm-event", onEvent);
  req.on("close", stop);
  res.on("close", stop);
  try {
    const backlog = await m.vms.events(vmId);
    for (const ev of backlog) s.line({ type: "event", event: ev });
    // Events that arrived while the journal was read may be in it already.
    const tail = new Set(backlog.slice(-64).map((e) => JSON.stringify(e)));
    for (const ev of live) if (!tail.has(JSON.stringify(ev))) s.line({ type: "event", event: ev });
    backlogDone = true;
    s.line({ type: "following" });
  } catch (err) {
    stop();
    throw err;
  }
}
