import { test } from "node:test";
import assert from "node:assert/strict";
import {
  GUIDS, applySecureBootTemplate, parseVarStore, readBootConfiguration, readSecureBootState, setSecureBootEnable, syncDeviceEntries,
  templateDb,
} from "../../src/firmware/index.js";
import { parseBootFailure } from "../../src/supervisor/boot-failure.js";
import { ovmfFwCfg } from "../../src/engine/qemu/fwcfg.js";
import { buildArgv } from "../../src/engine/qemu/argv.js";
import { sampleVm } from "../helpers/sample-vm.js";
import { fixture } from "../fixtures/firmware/helpers.js";

const WINDOWS = "Microsoft Windows Production PCA 2011";
const UEFI_CA = "Microsoft Corporation UEFI CA 2011";

test("Debian's key store has both Microsoft CAs; each template keeps one, as Hyper-V's do", () => {
  const keys = parseVarStore(fixture("pristine-OVMF_VARS.ms.fd"));
  const db = keys.get("db", GUIDS.imageSecurityDatabase)!.data;
  assert.deepEqual(templateDb(db, "MicrosoftWindows").trusted, [WINDOWS]);
  assert.deepEqual(templateDb(db, "MicrosoftUEFICertificateAuthority").trusted, [UEFI_CA]);
  assert.deepEqual(templateDb(db, "OpenSourceShieldedVM").trusted, [UEFI_CA]);
});

test("a template goes into the VM's own store: keys written, boot entries untouched, state read back", () => {
  const keys = parseVarStore(fixture("pristine-OVMF_VARS.ms.fd"));
  const vm = parseVarStore(fixture("ovmf4m.fd"));
  const entries = readBootConfiguration(vm).entries.map((e) => e.description);
  assert.equal(readSecureBootState(vm).setupMode, true);
  applySecureBootTemplate(vm, keys, "MicrosoftUEFICertificateAuthority", true);
  let st = readSecureBootState(vm);
  assert.deepEqual([st.pkEnrolled, st.setupMode, st.secureBoot, st.db], [true, false, true, [UEFI_CA]]);
  assert.ok(st.kek.includes("Microsoft Corporation KEK CA 2011"));
  assert.deepEqual(readBootConfiguration(vm).entries.map((e) => e.description), entries);
  // The PK keeps its time-authenticated attributes and timestamp.
  assert.equal(vm.get("PK", GUIDS.globalVariable)!.attributes, keys.get("PK", GUIDS.globalVariable)!.attributes);
  assert.deepEqual(vm.get("PK", GUIDS.globalVariable)!.timestamp, keys.get("PK", GUIDS.globalVariable)!.timestamp);
  applySecureBootTemplate(vm, keys, "MicrosoftWindows", true);
  assert.deepEqual(readSecureBootState(vm).db, [WINDOWS]);
  setSecureBootEnable(vm, false);
  st = readSecureBootState(vm);
  assert.deepEqual([st.pkEnrolled, st.secureBoot, st.secureBootEnable], [true, false, false]);
  // Survives a round trip through bytes (what is written to nvram.fd).
  assert.deepEqual(readSecureBootState(parseVarStore(vm.toBuffer())).db, [WINDOWS]);
  syncDeviceEntries(vm, { scsiControllers: [], scsiDevices: [], nics: [] }, "IPv4");
});

test("OVMF's console line for a failed boot attempt is parsed into entry, phase and reason", () => {
  const f = parseBootFailure(
    'BdsDxe: failed to load Boot0001 "UEFI QEMU QEMU HARDDISK " from PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x0): Access Denied',
  );
  assert.equal(f?.entry, "Boot0001");
  assert.equal(f?.phase, "load");
  assert.equal(f?.description, "UEFI QEMU QEMU HARDDISK ");
  assert.equal(f?.firmwarePath, "PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x0,0x0)");
  assert.equal(f?.reason, "Access Denied");
  const g = parseBootFailure(
    'BdsDxe: failed to start Boot0002 "EFI Internal Shell" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1): Security Violation',
  );
  assert.deepEqual([g?.phase, g?.reason], ["start", "Security Violation"]);
  assert.equal(parseBootFailure("BdsDxe: loading Boot0001 \"x\" from y"), null);
});

test("PreferredNetworkBootProtocol becomes OVMF's fw_cfg switches; a VM's boot payload is served on the Default Switch", () => {
  const vm = sampleVm({
    generation: 2,
    networkAdapters: [{ name: "Network Adapter", type: "Synthetic", macAddress: "00:15:5D:00:00:01", dynamicMac: false, switchName: "Default Switch", pciSlot: 8 }],
  });
  assert.deepEqual(ovmfFwCfg(vm), {
    "opt/org.tianocore/IPv4PXESupport": "yes",
    "opt/org.tianocore/IPv6PXESupport": "no",
    "opt/org.tianocore/IPv6Support": "no",
  });
  vm.firmware.preferredNetworkBootProtocol = "IPv6";
  assert.equal(ovmfFwCfg(vm)["opt/org.tianocore/IPv4Support"], "no");
  vm.firmware.networkBootPayload = { dir: "/srv/boot", file: "bootx64.efi" };
  const argv = buildArgv(vm, { qmpSocket: "q", serialSocket: "s", consoleLog: "c", agentSocket: "a", pidFile: "p", nvram: "n" }, {
    accel: "tcg",
    uefiCode: "code.fd",
  });
  assert.ok(argv.includes("name=opt/org.tianocore/IPv6PXESupport,string=yes"));
  assert.ok(argv.some((x) => x.startsWith("user,id=net8,tftp=/srv/boot,bootfile=bootx64.efi")));
  assert.deepEqual(ovmfFwCfg(sampleVm({ generation: 1 })), {});
});
