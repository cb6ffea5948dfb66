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
