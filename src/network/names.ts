import { createHash } from "node:crypto";

/**
 * Host-side names of a switch's and an adapter's kernel objects, derived from ids so they are
 * stable across restarts and reboots, fit Linux's 15-byte interface names, and carry a prefix
 * that says they are vmhost's.
 */
function short(id: string): string {
  return id.replace(/-/g, "").slice(0, 8).toLowerCase();
}

export const NAMES = {
  bridge: (switchId: string) => `vmhbr${short(switchId)}`,
  /** The private switch's DHCP service lives in its own namespace, joined to the bridge by a veth pair. */
  serviceNetns: (switchId: string) => `vmhost-sw-${short(switchId)}`,
  serviceVethHost: (switchId: string) => `vmhsv${short(switchId)}`,
  serviceVethNs: (switchId: string) => `vmhsn${short(switchId)}`,
  nftTable: (switchId: string) => `vmhost_${short(switchId)}`,
  stateDir: (switchId: string) => short(switchId),
  /** One tap per adapter of a running VM. */
  tap: (vmId: string, adapterName: string) => `vmht${createHash("sha256").update(`${vmId}\0${adapterName}`).digest("hex").slice(0, 10)}`,
} as const;

export const TAP_PREFIX = "vmht";
export const BRIDGE_PREFIX = "vmhbr";
