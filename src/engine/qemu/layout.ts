/**
 * Fixed PCI slots, the same on every VM of a generation, so firmware device paths
 * (PciRoot(0x0)/Pci(slot,0x0)/...) map back to VM devices without asking QEMU.
 */
export const PCI_SLOTS = {
  agentChannel: 2,
  scsiController: (controller: number): number => 3 + controller,
  networkAdapter: (index: number): number => 8 + index,
} as const;

/** QEMU ids, stable so QMP hotplug and adoption can find devices again. */
export const QEMU_IDS = {
  scsiController: (c: number) => `scsi${c}`,
  disk: (type: "IDE" | "SCSI", c: number, l: number) => `${type.toLowerCase()}${c}-${l}`,
  diskNode: (type: "IDE" | "SCSI", c: number, l: number) => `drive-${type.toLowerCase()}${c}-${l}`,
  nic: (i: number) => `nic${i}`,
  netdev: (i: number) => `net${i}`,
} as const;
