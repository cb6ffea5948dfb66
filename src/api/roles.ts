import { z } from "zod";

/**
 * Who may call a route. The three roles of issue 10, ordered: each includes the ones below it.
 *  - reader: reads every view (VMs, firmware, switches, jobs, events); changes nothing.
 *  - operator: also lifecycle (start, stop, turn off, save, pause, resume, restart), the consoles,
 *    VSS freeze/thaw, cancelling jobs, and (later) checkpoints; no configuration or host changes.
 *  - administrator: everything, including configuration, switches, uploads, trust and tokens.
 * "public" marks the two routes that authenticate the caller themselves (browser login with an
 * API token, redeeming a one-time trust token); they refuse anything but a valid token.
 */
export const Role = z.enum(["reader", "operator", "administrator"]);
export type Role = z.infer<typeof Role>;
export type RouteRole = Role | "public";

const RANK: Record<Role, number> = { reader: 1, operator: 2, administrator: 3 };

/** True when a caller holding `have` may call a route that needs `need`. */
export function roleAllows(have: Role, need: RouteRole): boolean {
  return need === "public" || RANK[have] >= RANK[need];
}
