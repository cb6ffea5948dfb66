import { z } from "zod";
import { buildNetbootPayload } from "../images/netboot.js";
import type { VmHost } from "./vmhost.js";
import { NAME_GROUP, parseBody, vmRoute, type Route } from "./validate.js";

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

export const networkRoutes: Route<VmHost>[] = [
  ["GET", /^\/v1\/switches$/, (m) => m.network.list()],
  ["POST", /^\/v1\/switches$/, (m, _p, b) => m.network.create(parseBody(NetworkSchemas.switchNew, b))],
  ["GET", new RegExp(`^/v1/switches/${NAME_GROUP}$`), (m, [n]) => m.network.show(n!)],
  ["DELETE", new RegExp(`^/v1/switches/${NAME_GROUP}$`), (m, [n]) => m.network.remove(n!)],
  [
    "POST",
    vmRoute("nics/connect"),
    async (m, [n], b) => {
      const r = parseBody(NetworkSchemas.nicConnect, b);
      return m.vms.view(await m.devices.nicConnect(n!, r.adapter, r.switchName));
    },
  ],
  [
    "POST",
    /^\/v1\/netboot\/payload$/,
    async (_m, _p, b) => {
      const r = parseBody(NetworkSchemas.netboot, b);
      return buildNetbootPayload(r.dir, { marker: r.marker });
    },
  ],
];
