import type { VmConfig } from "../../src/model/index.js";

/** A valid generation 2 VM to vary in unit tests. */
export function sampleVm(over: Partial<VmConfig> = {}): VmConfig {
  return {
    formatVersion: 2,
    name: "a",
    id: "0b6f2a7e-4c1d-4a57-9b0e-2f8f1e6d2a11",
    generation: 2,
    processorCount: 1,
    memoryMiB: 512,
    notes: "",
    createdAt: "2026-11-21T00:00:00.000Z",
    hardDisks: [],
    dvdDrives: [],
    networkAdapters: [],
    firmware: {
      secureBoot: false,
      secureBootTemplate: "MicrosoftUEFICertificateAuthority",
      preferredNetworkBootProtocol: "IPv4",
      pauseAfterBootFailure: false,
      startupOrder: ["CD", "IDE", "LegacyNetworkAdapter", "Floppy"],
    },
    checkpointType: "Production",
    display: false,
    ...over,
  };
}
