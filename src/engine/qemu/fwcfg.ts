import type { VmConfig } from "../../model/schema.js";

/**
 * The fw_cfg items vmhost gives OVMF (one home for them; argv.ts adds them, and anything a
 * caller passes in EngineOptions.fwCfg wins).
 *
 * PreferredNetworkBootProtocol (Hyper-V: VM-wide, IPv4 by default): OVMF is told to offer
 * PXE only over that protocol (opt/org.tianocore/IPv{4,6}PXESupport) and to load no IP stack
 * for the other one (IPv{4,6}Support), which also drops its HTTP boot entry; there is no
 * fw_cfg switch for HTTP boot itself (OvmfPkg/RUNTIME_CONFIG.md), so each adapter ends up with
 * one PXE entry and one HTTP entry, both over the chosen protocol.
 */
export function ovmfFwCfg(vm: VmConfig): Record<string, string> {
  if (vm.generation !== 2) return {};
  const v6 = vm.firmware.preferredNetworkBootProtocol === "IPv6";
  return {
    "opt/org.tianocore/IPv4PXESupport": v6 ? "no" : "yes",
    "opt/org.tianocore/IPv6PXESupport": v6 ? "yes" : "no",
    [v6 ? "opt/org.tianocore/IPv4Support" : "opt/org.tianocore/IPv6Support"]: "no",
  };
}
