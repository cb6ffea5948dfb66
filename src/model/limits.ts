/** Hyper-V's device limits (Windows Server 2016 scalability table), enforced by the rules. */
export const LIMITS = {
  ideControllers: 2,
  ideLocations: 2,
  scsiControllers: 4,
  scsiLocations: 64,
  syntheticAdapters: 8,
  legacyAdapters: 4,
  minMemoryMiB: 32,
  memoryGranularityMiB: 2,
  maxNotes: 4096,
} as const;

/**
 * PCI slots a VM's network adapters take (one each, kept for the adapter's life, so interface
 * names and firmware paths never shift): 0x08 up to 0x13, room for the 8 synthetic and 4 legacy
 * adapters. Slots 2-7 are the engine's fixed devices (agent channel, SCSI controllers;
 * engine/qemu/layout.ts); q35 reserves 0x1f for its ICH9 functions.
 */
export const ADAPTER_PCI_SLOTS = { first: 0x08, last: 0x13 } as const;
