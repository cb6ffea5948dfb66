/**
 * Firmware codecs: OVMF variable stores, UEFI device paths, load options, boot entries and
 * boot-order policy. Pure TypeScript; nothing here knows about QEMU.
 */
export * from "./errors.js";
export { GUIDS, guidToBytes, guidToString, guidEquals, isGuid, normalizeGuid } from "./guid.js";
export { decodeUcs2, encodeUcs2 } from "./ucs2.js";
export {
  ATTRS_NV_BS_RT, VARIABLE_ATTRIBUTE, formatAttributes, decodeEfiTime, encodeEfiTime, efiTimeFromDate, ZERO_EFI_TIME,
  type EfiTime,
} from "./variable.js";
export {
  VarStore, parseVarStore, parseVariableRecord, VAR_STATE,
  type VarStoreLayout, type VariableRecord, type VariableRecordContext, type InterruptedWrite, type UefiVariable,
  type SetVariableOptions, type SetVariableResult,
} from "./varstore.js";
export { readVarStoreFile, writeVarStoreFileAtomic } from "./varstorefile.js";
export {
  OVMF_FLASH_BUILDS, ovmfBuildForCode, ovmfBuildsForVars, checkVarStoreForFirmware, checkVarStoreFileForFirmware,
  type OvmfFlashBuild, type FirmwareFiles,
} from "./ovmfbuild.js";
export {
  parseDevicePath, parseDevicePathList, encodeDevicePath, encodeDevicePathList, instancesOf, terminate,
  isEndEntire, isEndInstance, endEntireNode, endInstanceNode, makeNode, NODE_TYPE,
  type DevicePath, type DevicePathNode,
} from "./devicepath/binary.js";
export {
  devicePathToText, devicePathFromText, nodeToText, nodeFromText, decodeNode, genericNodeText,
  type ToTextOptions, type FromTextOptions,
} from "./devicepath/text.js";
export { VENDOR_GUIDS, type DecodedNode, type NodeKind } from "./devicepath/nodes.js";
export {
  LOAD_OPTION, decodeLoadOption, encodeLoadOption, loadOptionPaths, makeLoadOption, autoCreatedMarker, isAutoCreated,
  type LoadOption, type NewLoadOption,
} from "./loadoption.js";
export {
  bootOptionName, parseBootOptionName, decodeBootOrder, encodeBootOrder, readBootOrder, writeBootOrder, readBootNext,
  writeBootNext, listBootOptionIds, readBootOption, readBootOptionBytes, writeBootOption, deleteBootOption,
} from "./bootorder.js";
export {
  firmwareDeviceLayoutSchema, EMPTY_LAYOUT, classifyLoadOption, firmwareFileOf, mapDevicePath, describeBootOption, readBootConfiguration,
  networkProtocolOf, normalizeMac, partitionTableResolver,
  type FirmwareDeviceLayout, type BootEntryType, type NetworkBootProtocol, type BootDevice, type BootEntry,
  type BootConfiguration, type HardDriveNodeInfo, type MapOptions,
} from "./bootentries.js";
export {
  moveFirst, applyBootOrder, nextFreeBootNumber, freeBootNumbers,
  type ApplyBootOrderOptions, type ApplyBootOrderResult,
} from "./bootpolicy.js";
export {
  expectedDeviceEntries, syncDeviceEntries, planDeviceEntries, applyDeviceEntryPlan, recreatedAtBoot, FIRMWARE_APPS, parseBootTarget,
  resolveBootTarget, setFirstBootDevice, setBootOrder, bootEntriesView, describeBootEntries,
  type PreferredNetworkBootProtocol, type DeviceEntrySpec, type SyncResult, type DeviceEntryPlan, type BootTarget, type SetBootOrderResult,
  type BootEntryRow, type BootEntriesView,
} from "./service.js";
export {
  parseSignatureLists, classifyCertificate, templateDb, applySecureBootTemplate, setSecureBootEnable, readSecureBootState,
  SecureBootTemplateError, SECURE_BOOT_VARIABLE_GUID, TEMPLATE_TRUST,
  type SecureBootTemplateName, type SignatureList, type SignatureListEntry, type SecureBootNvramState,
} from "./secureboot.js";
