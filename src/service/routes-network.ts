import { z } from "zod";
import { buildNetbootPayload } from "../images/netboot.js";
import { VmhostError } from "../util/errors.js";
import type { VmManager } from "./manager.js";

/** API routes of virtual switches, adapter connections and network-boot payloads. */

export const NetworkSchemas = {
  switchNew: z
    .object({
      name: z.string().min(1).max(64),
      type: z.enum(["external", "internal", "private", "nat"]),
      netAdapter: z.string().min(1).max(15).optional(),
      subnet: z.string().min(1).max(64).optional(),
      ipv6Prefix: z.string().min(1).max(64).optional(),
      dhcp: z.boolean().optional(),
      bootDir: z.string().min(1).max(4096).optional(),
      bootFile: z.string().min(1).max(255).optional(),
    })
    .strict(),
  nicConnect: z.object({ adapter: z.string().min(1).max(64), switchName: z.string().min(1).max(64) }).strict(),
  netboot: z.object({ dir: z.string().min(1).max(4096), marker: z.string().min(1).max(64).optional() }).strict(),
};

function parse<S extends z.ZodTypeAny>(schema: S, body: unknown): z.output<S> {
  const r = schema.safeParse(body ?? {});
  if (!r.success) {
    const i = r.error.issues[0];
    throw new VmhostError("bad-request", `invalid request: ${i ? `${i.path.join(".") || "body"}: ${i.message}` : "invalid"}`);
  }
  return r.data;
}

type Handler = (m: VmManager, params: string[], body: unknown) => Promise<unknown>;
const NAME = "([^/]+)";

export const networkRoutes: [string, RegExp, Handler][] = [
  ["GET", /^\/v1\/switches$/, (m) => m.network.list()],
  ["POST", /^\/v1\/switches$/, (m, _p, b) => m.network.create(parse(NetworkSchemas.switchNew, b))],
  ["GET", new RegExp(`^/v1/switches/${NAME}$`), (m, [n]) => m.network.show(n!)],
  ["DELETE", new RegExp(`^/v1/switches/${NAME}$`), (m, [n]) => m.network.remove(n!)],
  [
    "POST",
    new RegExp(`^/v1/vms/${NAME}/nics/connect$`),
    (m, [n], b) => {
      const r = parse(NetworkSchemas.nicConnect, b);
      return m.nicConnect(n!, r.adapter, r.switchName);
    },
  ],
  [
    "POST",
    /^\/v1\/netboot\/payload$/,
    async (_m, _p, b) => {
      const r = parse(NetworkSchemas.netboot, b);
      return buildNetbootPayload(r.dir, { marker: r.marker });
    },
  ],
];
