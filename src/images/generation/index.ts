// Converting a Generation 1 boot disk (MBR, BIOS boot loader) into a Generation 2 one (GPT,
// EFI System Partition, a UEFI loader on the removable-media path), as Hyper-V users do by
// hand or with MBR2GPT. The VM around the disk (a new "NAME (Generation 2)" configuration,
// its NVRAM from the Secure Boot template the plan names) is the service's part.
export { inspect, convert, ConversionRefusedError, ConversionFailedError } from "./convert.js";
export type { InspectOptions, ConvertOptions, ConversionResult } from "./convert.js";
export type {
  ImageFormat,
  SecureBootTemplateName,
  Refusal,
  RefusalCode,
  Inspection,
  ConversionPlan,
  BootPlan,
  EspPlan,
  LoaderPlan,
  PlannedPartition,
  FileRef,
} from "./plan.js";
export { NEW_ESP_BYTES, ESP_TYPE_GUID } from "./plan.js";
export { debianSignedBootChain, SIGNED_CHAIN_SOURCES } from "./boot-chain.js";
export type { Gen2BootChain } from "./boot-chain.js";
