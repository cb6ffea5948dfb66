import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { ensureAppliance } from "../images/appliance/index.js";
import { CheckpointType, DiskFormat } from "../model/schema.js";
import { VmhostError } from "../util/errors.js";
import { NAME_GROUP, parseBody, type Route } from "./validate.js";
import type { VmHost } from "./vmhost.js";
import { firmwareRoutes } from "./routes-firmware.js";
import { guestRoutes, handleGuestStream } from "./routes-guest.js";
import { networkRoutes } from "./routes-network.js";
import { checkpointRoutes, handleCheckpointStream } from "./routes-checkpoints.js";
import { handleTravelStream, travelRoutes } from "./routes-travel.js";

/** Request bodies, validated at the edge. */
export const Schemas = {
  create: z
    .object({
      name: z.string(),
      generation: z.union([z.literal(1), z.literal(2)]),
      processorCount: z.number().int().min(1).optional(),
      memoryMiB: z.number().int().min(1).optional(),
      disk: z.string().min(1).optional(),
      diskFormat: DiskFormat.optional(),
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
      checkpointType: CheckpointType.optional(),
      display: z.boolean().optional(),
    })
    .strict(),
  rename: z.object({ name: z.string() }).strict(),
  stop: z.object({ force: z.boolean().default(false), timeoutSeconds: z.number().positive().max(3600).default(60) }).strict(),
  diskAdd: z
    .object({
      path: z.string().min(1).optional(),
      format: DiskFormat.optional(),
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
const routes: Route<VmHost>[] = [
  ["GET", /^\/v1\/host$/, (m) => m.host()],
  ["POST", /^\/v1\/host\/accelerator\/probe$/, (m) => m.accelerator(true)],
  ["GET", /^\/v1\/vms$/, (m) => m.vms.list()],
  ["POST", /^\/v1\/vms$/, (m, _p, b) => m.vms.create(parse(Schemas.create, b))],
  ["GET", new RegExp(`^/v1/vms/${NAME}$`), (m, [n]) => m.vms.show(n!)],
  ["DELETE", new RegExp(`^/v1/vms/${NAME}$`), (m, [n], b) => m.vms.remove(n!, parse(Schemas.remove, b).deleteDisks)],
  ["PATCH", new RegExp(`^/v1/vms/${NAME}$`), async (m, [n], b) => m.vms.view(await m.devices.set(n!, parse(Schemas.set, b)))],
  ["POST", new RegExp(`^/v1/vms/${NAME}/rename$`), (m, [n], b) => m.vms.rename(n!, parse(Schemas.rename, b).name)],
  ["POST", new RegExp(`^/v1/vms/${NAME}/start$`), async (m, [n]) => ({ state: await m.vms.start(n!) })],
  [
    "POST",
    new RegExp(`^/v1/vms/${NAME}/stop$`),
    async (m, [n], b) => {
      const s = parse(Schemas.stop, b);
      return m.vms.stop(n!, s.force, s.timeoutSeconds * 1000);
    },
  ],
  ["POST", new RegExp(`^/v1/vms/${NAME}/turn-off$`), async (m, [n]) => ({ state: await m.vms.turnOff(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/pause$`), async (m, [n]) => ({ state: await m.vms.pause(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/resume$`), async (m, [n]) => ({ state: await m.vms.resume(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/save$`), async (m, [n]) => ({ state: await m.vms.save(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/restart$`), async (m, [n]) => ({ state: await m.vms.restart(n!) })],
  ["POST", new RegExp(`^/v1/vms/${NAME}/disks$`), async (m, [n], b) => m.vms.view(await m.devices.diskAdd(n!, parse(Schemas.diskAdd, b)))],
  ["POST", new RegExp(`^/v1/vms/${NAME}/disks/remove$`), async (m, [n], b) => m.vms.view(await m.devices.diskRemove(n!, parse(Schemas.ref, b).ref))],
  [
    "POST",
    new RegExp(`^/v1/vms/${NAME}/dvd$`),
    async (m, [n], b) => {
      const d = parse(Schemas.dvd, b);
      return m.vms.view(await m.devices.dvdSet(n!, d.path, d.ref));
    },
  ],
  ["POST", new RegExp(`^/v1/vms/${NAME}/floppy$`), async (m, [n], b) => m.vms.view(await m.devices.floppySet(n!, parse(Schemas.floppy, b).path))],
  ["POST", new RegExp(`^/v1/vms/${NAME}/nics$`), async (m, [n], b) => m.vms.view(await m.devices.nicAdd(n!, parse(Schemas.nicAdd, b)))],
  ["POST", new RegExp(`^/v1/vms/${NAME}/nics/remove$`), async (m, [n], b) => m.vms.view(await m.devices.nicRemove(n!, parse(Schemas.ref, b).ref))],
  ["GET", new RegExp(`^/v1/vms/${NAME}/console$`), async (m, [n]) => ({ log: await m.vms.consoleLog(n!) })],
  ["GET", new RegExp(`^/v1/vms/${NAME}/console/socket$`), async (m, [n]) => ({ socket: await m.vms.consoleSocket(n!) })],
  ["GET", new RegExp(`^/v1/vms/${NAME}/events$`), (m, [n]) => m.vms.events(n!)],
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
  ...checkpointRoutes,
  ...travelRoutes,
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

export function apiHandler(manager: VmHost, onActivity: () => void) {
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    onActivity();
    const url = new URL(req.url ?? "/", "http://vmhost");
    if (await handleGuestStream(manager, req, res, url, (r) => readBody(r))) return;
    if (await handleCheckpointStream(manager, req, res, url, (r) => readBody(r))) return;
    if (await handleTravelStream(manager, req, res, url, (r) => readBody(r), onActivity)) return;
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
