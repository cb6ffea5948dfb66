import { z } from "zod";

/**
 * A virtual switch, as Hyper-V's New-VMSwitch knows them:
 *   External  the bridge enslaves a host NIC, so VMs sit on that NIC's LAN;
 *   Internal  VMs and the host (an address on the bridge);
 *   Private   VMs only: the host has no address and takes no traffic from the bridge;
 *   NAT       Internal plus masquerading out of the host's uplink.
 * The built-in "Default Switch" is not stored: it is QEMU user-mode networking, per VM.
 */
export const SwitchType = z.enum(["External", "Internal", "Private", "NAT"]);
export type SwitchType = z.infer<typeof SwitchType>;

export const DEFAULT_SWITCH = "Default Switch";

export const SwitchName = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9 ._-]*$/, "switch names use letters, digits, space, '.', '_' and '-', and start with a letter or digit");

export const SwitchConfig = z
  .object({
    formatVersion: z.literal(1),
    name: SwitchName,
    id: z.string().uuid(),
    type: SwitchType,
    /** External: the host NIC the bridge enslaves. NAT: the uplink to masquerade out of (any when absent). */
    netAdapter: z.string().min(1).max(15).optional(),
    /** IPv4 subnet (Internal, Private and NAT); the switch's own address is its first one. */
    subnet: z.string().optional(),
    /** IPv6 /64 (Internal, Private and NAT with DHCP); the switch's own address is ::1. */
    ipv6Prefix: z.string().optional(),
    dhcp: z.boolean(),
    /** TFTP root and the network boot program handed out by DHCP (option 67 / DHCPv6 option 59). */
    boot: z.object({ dir: z.string().min(1), file: z.string().min(1) }).strict().optional(),
    createdAt: z.string(),
  })
  .strict();
export type SwitchConfig = z.infer<typeof SwitchConfig>;

/** What a switch needs from the host; only the Default Switch needs nothing. */
export function switchNeedsRoot(type: SwitchType | "Default"): boolean {
  return type !== "Default";
}
