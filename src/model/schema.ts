import { z } from "zod";

/** The on-disk and API shape of a VM. Engine-neutral: Hyper-V's vocabulary, not QEMU's. */

export const Generation = z.union([z.literal(1), z.literal(2)]);
export type Generation = z.infer<typeof Generation>;

export const ControllerType = z.enum(["IDE", "SCSI"]);
export type ControllerType = z.infer<typeof ControllerType>;

const Slot = {
  controllerType: ControllerType,
  controllerNumber: z.number().int().min(0),
  controllerLocation: z.number().int().min(0),
};

/** Image formats vmhost attaches, always named explicitly (never probed): VHDX, VHD (QEMU's "vpc", fixed or dynamic), qcow2, raw. */
export const DiskFormat = z.enum(["vhdx", "vhd", "qcow2", "raw"]);
export type DiskFormat = z.infer<typeof DiskFormat>;

export const HardDisk = z
  .object({
    ...Slot,
    path: z.string().min(1),
    format: DiskFormat,
  })
  .strict();
export type HardDisk = z.infer<typeof HardDisk>;

export const DvdDrive = z
  .object({
    ...Slot,
    /** ISO image in the drive, or null when empty. */
    path: z.string().min(1).nullable(),
  })
  .strict();
export type DvdDrive = z.infer<typeof DvdDrive>;

export const MacAddress = z.string().regex(/^([0-9A-F]{2}:){5}[0-9A-F]{2}$/, "MAC address must look like 00:15:5D:01:02:03");

export const NetworkAdapter = z
  .object({
    name: z.string().min(1).max(64),
    /** Synthetic = paravirtual (virtio-net); Legacy = emulated NIC that firmware and old guests drive (Gen1 only). */
    type: z.enum(["Synthetic", "Legacy"]),
    macAddress: MacAddress,
    dynamicMac: z.boolean(),
    switchName: z.string().min(1),
    /**
     * The adapter's PCI slot, given once when it is added and kept until it is removed, so the
     * guest's interface names and the firmware's device paths stay put when other adapters come
     * and go (as on Hyper-V). See engine/qemu/layout.ts for the slot ranges.
     */
    pciSlot: z.number().int().min(0).max(31),
  })
  .strict();
export type NetworkAdapter = z.infer<typeof NetworkAdapter>;

export const SecureBootTemplate = z.enum(["MicrosoftWindows", "MicrosoftUEFICertificateAuthority", "OpenSourceShieldedVM"]);
export type SecureBootTemplate = z.infer<typeof SecureBootTemplate>;

export const Gen1BootDevice = z.enum(["CD", "IDE", "LegacyNetworkAdapter", "Floppy"]);
export type Gen1BootDevice = z.infer<typeof Gen1BootDevice>;

export const FirmwareSettings = z
  .object({
    /** Gen2 only. */
    secureBoot: z.boolean().default(false),
    secureBootTemplate: SecureBootTemplate.default("MicrosoftUEFICertificateAuthority"),
    preferredNetworkBootProtocol: z.enum(["IPv4", "IPv6"]).default("IPv4"),
    pauseAfterBootFailure: z.boolean().default(false),
    /** Gen1 only: Hyper-V's BIOS startup order. */
    startupOrder: z.array(Gen1BootDevice).default(["CD", "IDE", "LegacyNetworkAdapter", "Floppy"]),
    /** A directory the Default Switch serves over TFTP, and the file DHCP names as the boot program. */
    networkBootPayload: z.object({ dir: z.string().min(1), file: z.string().min(1) }).strict().optional(),
  })
  .strict();
export type FirmwareSettings = z.infer<typeof FirmwareSettings>;

/**
 * Integration services (Get-VMIntegrationService) and the host's KVP items for the guest
 * (Hyper-V keeps those in the VM's configuration and hands them to the guest on every
 * contact). Omitted in older files: Hyper-V's defaults apply.
 */
export const IntegrationServices = z
  .object({
    enabled: z
      .object({
        guestServiceInterface: z.boolean().default(false),
        heartbeat: z.boolean().default(true),
        keyValuePairExchange: z.boolean().default(true),
        shutdown: z.boolean().default(true),
        timeSynchronization: z.boolean().default(true),
        vss: z.boolean().default(true),
      })
      .strict()
      .default({}),
    /** Host-to-guest items (KVP external pool); UTF-8 limits are the KVP record's (511/2047 bytes). */
    hostKvpItems: z
      .array(z.object({ key: z.string().min(1).max(511), value: z.string().max(2047) }).strict())
      .max(1024)
      .default([]),
  })
  .strict();
export type IntegrationServices = z.infer<typeof IntegrationServices>;

/** Hyper-V's checkpoint types (Set-VM -CheckpointType); Production is the default, as on Hyper-V. */
export const CheckpointType = z.enum(["Disabled", "Production", "ProductionOnly", "Standard"]);
export type CheckpointType = z.infer<typeof CheckpointType>;

/** The configuration format this vmhost writes; older ones are upgraded on read (model/upgrade.ts). */
export const CONFIG_FORMAT_VERSION = 2;

export const VmConfig = z
  .object({
    formatVersion: z.literal(CONFIG_FORMAT_VERSION),
    /** Hyper-V's VM name rules (names.ts); unique ignoring case (rules.ts). */
    name: z.string(),
    id: z.string().uuid(),
    generation: Generation,
    processorCount: z.number().int().min(1),
    memoryMiB: z.number().int().min(32),
    notes: z.string().max(4096).default(""),
    createdAt: z.string(),
    hardDisks: z.array(HardDisk).default([]),
    dvdDrives: z.array(DvdDrive).default([]),
    /** Gen1 only: the virtual floppy drive's disk (.vfd), or null when empty. */
    floppy: z.object({ path: z.string().min(1).nullable() }).strict().optional(),
    networkAdapters: z.array(NetworkAdapter).default([]),
    firmware: FirmwareSettings.default({}),
    /** Set when the VM was made from the built-in appliance: which build its disk sits on. */
    appliance: z.object({ id: z.string(), kernel: z.string() }).strict().optional(),
    integrationServices: IntegrationServices.optional(),
    checkpointType: CheckpointType.default("Production"),
    /** A graphical console (QEMU VNC on a unix socket, proxied by vmhostd); off by default. */
    display: z.boolean().default(false),
  })
  .strict();
export type VmConfig = z.infer<typeof VmConfig>;

/** Runtime states, as Hyper-V names them. */
export const VmState = z.enum(["Off", "Starting", "Running", "Paused", "Saved", "Stopping", "Saving"]);
export type VmState = z.infer<typeof VmState>;
