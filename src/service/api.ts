import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { ensureAppliance } from "../images/appliance/index.js";
import { DiskFormat } from "../model/schema.js";
import { VmhostError } from "../util/errors.js";
import { NAME_GROUP, parseBody, type Route } from "./validate.js";
import type { VmManager } from "./manager.js";
import { firmwareRoutes } from "./routes-firmware.js";
import { guestRoutes, handleGuestStream } from "./routes-guest.js";
import { networkRoutes } from "./routes-network.js";

/** Request bodies, validated at the edge. */
export const Schemas = {
  create: z
    .object({
      name: z.string(),
      generation: z.union([z.literal(1), z.literal(2)]),
      processorCount: z.number().int().min(1).optional(),
      memoryMiB: z.number().int().min(1).optional(),
      disk: z.string().min(1).optional(),
      newDisk: z.object({ sizeBytes: z.number().int().positive(), format: DiskFormat }).optional(),
      dvd: z.string().min(1).optional(),
      appliance: z.boolean().optional(),
      notes: z.string().max(4096).optional(),
    })
    .strict(),
  set: z
    .object({
      processorCount: z.number().int().min(1).optional(),
      memoryMiB: z.number().int().min(1).optional(),
      notes: z.string().max(4096).optional(),
    })
    .strict(),
  stop: z.object({ force: z.boolean().default(false), timeoutSeconds: z.number().positive().max(3600).default(60) }).strict(),
  diskAdd: z
    .object({
      path: z.string().min(1).optional(),
      newDisk: z.object({ sizeBytes: z.number().int().positive(), format: DiskFormat }).optional(),
      controllerType: z.enum(["IDE", "SCSI"]).optional(),
      controllerNumber: z.number().int().min(0).optional(),
      controllerLocation: z.number().int().min(0).optional(),
    })
    .strict(),
  ref: z.object({ ref: z.string().min(1) }).strict(),
  dvd: z.object({ path: z.string().min(1).nullable(), ref: z.string().optional() }).strict(),
  floppy: z.object({ path: z.string().min(1).nullable() }).strict(),
  nicAdd: z
    .object({
      legacy: z.boolean().default(false),
      name: z.string().min(1).max(64).optional(),
      mac: z.string().optional(),
      switchName: z.string().min(1).optional(),
    })
    .strict(),
  remove: z.object({ deleteDisks: z.boolean().default(false) }).strict(),
  applianceBuild: z.object({ force: z.boolean().default(false) }).strict(),
};

const parse = parseBody;

const NAME = NAME_GROUP;
const routes: Route<VmManager>[] = [
  ["GET", /^\/v1\/host$/, (m) => m.host()],
  ["POST", /^\/v1\/host\/accelerator\/probe$/, (m) => m.accelerator(true)],
  ["GET", /^\/v1\/vms$/, (m) => m.list()],
  ["POST", /^\/v1\/vms$/, (m, _p, b) => m.create(parse(Schemas.create, b))],
  ["GET", new RegExp(`^/v1/vms/${NAME}$`), (m, [n]) => m.show(n!)],
  ["DELETE", new RegExp(`^/v1/vms/${NAME}$`), (m, [n], b) => m.remove(n!, parse(Schemas.remove, b).deleteDisks)],
  ["PATCH", new RegExp(`^/v1/vms/${NAME}$`), (m, [n], b) => m.set(n!, parse(Schemas.set, b))],
  ["POST", new RegExp(`^/v1/vms/${NAME}/start$`), async (m, [n]) => ({ state: await m.start(n!) })],
  [
    "POST",
    new RegExp(`^/v1/vms/${NAME}/stop$`),
    async (m, [n], b) => {
      const s = parse(Schemas.stop, b);
      return m.stop(n!, s.force, s.timeoutSeconds * 1000);
    },
  ],
  ["POST", new RegExp(`^/v1/vms/${NAME}/turn-off$`), async (m, [n]) => ({ state: await m.turnOff(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/pause$`), async (m, [n]) => ({ state: await m.pause(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/resume$`), async (m, [n]) => ({ state: await m.resume(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/save$`), async (m, [n]) => ({ state: await m.save(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/restart$`), async (m, [n]) => ({ state: await m.restart(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/disks$`), (m, [n], b) => m.diskAdd(n!, parse(Schemas.diskAdd, b))],
  ["POST", new RegExp(`^/v1/vms/${NAME}/disks/remove$`), (m, [n], b) => m.diskRemove(n!, parse(Schemas.ref, b).ref)],
  [
    "POST",
    new RegExp(`^/v1/vms/${NAME}/dvd$`),
    (m, [n], b) => {
      const d = parse(Schemas.dvd, b);
      return m.dvdSet(n!, d.path, d.ref);
    },
  ],
  ["POST", new RegExp(`^/v1/vms/${NAME}/floppy$`), (m, [n], b) => m.floppySet(n!, parse(Schemas.floppy, b).path)],
  ["POST", new RegExp(`^/v1/vms/${NAME}/nics$`), (m, [n], b) => m.nicAdd(n!, parse(Schemas.nicAdd, b))],
  ["POST", new RegExp(`^/v1/vms/${NAME}/nics/remove$`), (m, [n], b) => m.nicRemove(n!, parse(Schemas.ref, b).ref)],
  ["GET", new RegExp(`^/v1/vms/${NAME}/console$`), async (m, [n]) => ({ log: await m.consoleLog(n!) })],
  ["GET", new RegExp(`^/v1/vms/${NAME}/console/socket$`), async (m, [n]) => ({ socket: await m.consoleSocket(n!) })],
  ["GET", new RegExp(`^/v1/vms/${NAME}/events$`), (m, [n]) => m.events(n!)],
  [
    "POST",
    /^\/v1\/appliance\/build$/,
    async (_m, _p, b) => {
      const lines: string[] = [];
      const app = await ensureAppliance({ force: parse(Schemas.applianceBuild, b).force, log: (l) => lines.push(l) });
      return { dir: app.dir, manifest: app.manifest, log: lines };
    },
  ],
  ...guestRoutes,
  ...firmwareRoutes,
  ...networkRoutes,
];

async function readBody(req: IncomingMessage, limit = 1024 * 1024): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > limit) throw new VmhostError("too-large", "request body too large", 413);
    chunks.push(c as Buffer);
  }
  if (size === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new VmhostError("bad-request", "request body is not valid JSON");
  }
}

export function apiHandler(manager: VmManager, onActivity: () => void) {
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    onActivity();
    const url = new URL(req.url ?? "/", "http://vmhost");
    if (await handleGuestStream(manager, req, res, url, (r) => readBody(r))) return;
    let status = 200;
    let payload: unknown;
    try {
      const route = routes.find(([method, re]) => method === req.method && re.test(url.pathname));
      if (!route) throw new VmhostError("not-found", `no such API route: ${req.method} ${url.pathname}`, 404);
      const params = (route[1].exec(url.pathname) ?? []).slice(1).map((p) => decodeURIComponent(p));
      payload = await route[2](manager, params, await readBody(req));
    } catch (err) {
      const e = err instanceof VmhostError ? err : new VmhostError("internal", (err as Error).message ?? String(err), 500);
      status = e.status;
      payload = { error: { code: e.code, message: e.message } };
    }
    const body = JSON.stringify(payload ?? null);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  };
}
