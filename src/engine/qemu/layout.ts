/**
 * Fixed PCI slots, the same on every VM of a generation (VGA 0x7 and USB 0x1e with a display), so firmware device paths
 * (PciRoot(0x0)/Pci(slot,0x0)/...) map back to VM devices without asking QEMU.
 */
export const PCI_SLOTS = {
  agentChannel: 2,
  scsiController: (controller: number): number => 3 + controller,
  // Network adapters carry their own slot in the configuration (model: NetworkAdapter.pciSlot,
  // ADAPTER_PCI_SLOTS), given once and kept, so removing one never moves another.
} as const;

/** QEMU ids, stable so QMP hotplug and adoption can find devices again. */
export const QEMU_IDS = {
  scsiController: (c: number) => `scsi${c}`,
  disk: (type: "IDE" | "SCSI", c: number, l: number) => `${type.toLowerCase()}${c}-${l}`,
  diskNode: (type: "IDE" | "SCSI", c: number, l: number) => `drive-${type.toLowerCase()}${c}-${l}`,
  /** Keyed by the adapter's PCI slot, which never changes while the adapter exists. */
  nic: (pciSlot: number) => `nic${pciSlot}`,
  netdev: (pciSlot: number) => `net${pciSlot}`,
} as const;
