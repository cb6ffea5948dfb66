import { test } from "node:test";
import assert from "node:assert/strict";
import { buildArgv, type RuntimePaths } from "../../src/engine/qemu/argv.js";
import { sampleVm } from "../helpers/sample-vm.js";

const paths: RuntimePaths = {
  qmpSocket: "/run/v/qmp.sock",
  serialSocket: "/run/v/serial.sock",
  consoleLog: "/var/lib/vmhost/vms/a/console.log",
  agentSocket: "/run/v/agent.sock",
  pidFile: "/run/v/qemu.pid",
  nvram: "/var/lib/vmhost/vms/a/nvram.fd",
};

function opt(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (argv[i - 1] === flag ? [a] : []));
}

test("gen2 argv: q35, OVMF code read-only + own NVRAM, no PIT/SATA, virtio-scsi, virtio-net, and no bootindex anywhere", () => {
  const vm = sampleVm({
    hardDisks: [{ controllerType: "SCSI", controllerNumber: 0, controllerLocation: 0, path: "/d/boot,1.qcow2", format: "qcow2" }],
    dvdDrives: [{ controllerType: "SCSI", controllerNumber: 0, controllerLocation: 1, path: "/iso/x.iso" }],
    networkAdapters: [{ name: "Network Adapter", type: "Synthetic", macAddress: "00:15:5D:AA:BB:CC", dynamicMac: true, switchName: "Default Switch", pciSlot: 8 }],
  });
  const a = buildArgv(vm, paths, { accel: "tcg", uefiCode: "/usr/share/OVMF/OVMF_CODE_4M.fd" });
  assert.equal(a.join(" ").includes("bootindex"), false);
  const machine = opt(a, "-machine")[0]!;
  assert.match(machine, /^q35,accel=tcg,/);
  for (const p of ["pit=off", "sata=off", "pflash0=fw-code", "pflash1=fw-vars"]) assert.ok(machine.split(",").includes(p), p);
  assert.ok(a.includes("-nodefaults"));
  const blockdevs = opt(a, "-blockdev").map((j) => JSON.parse(j) as Record<string, unknown>);
  assert.deepEqual(blockdevs.find((b) => b["node-name"] === "fw-code-file"), { driver: "file", "node-name": "fw-code-file", filename: "/usr/share/OVMF/OVMF_CODE_4M.fd", "read-only": true });
  assert.equal(blockdevs.find((b) => b["node-name"] === "fw-vars-file")?.["filename"], paths.nvram);
  const disk = blockdevs.find((b) => b["node-name"] === "drive-scsi0-0")!;
  assert.equal((disk["file"] as Record<string, unknown>)["filename"], "/d/boot,1.qcow2", "paths go through JSON, commas and all");
  const devices = opt(a, "-device");
  assert.ok(devices.includes("virtio-scsi-pci,id=scsi0,addr=0x3"));
  assert.ok(devices.includes("scsi-hd,id=scsi0-0,drive=drive-scsi0-0,bus=scsi0.0,scsi-id=0,lun=0"));
  assert.ok(devices.includes("scsi-cd,id=scsi0-1,drive=drive-scsi0-1,bus=scsi0.0,scsi-id=0,lun=1"));
  assert.ok(devices.includes("virtio-net-pci,id=nic8,netdev=net8,mac=00:15:5d:aa:bb:cc,addr=0x8,romfile="));
  assert.equal(devices.some((d) => /^ide-|^e1000/.test(d)), false);
  assert.ok(opt(a, "-chardev").some((c) => c.includes("logfile=/var/lib/vmhost/vms/a/console.log,logappend=on")));
  assert.ok(devices.includes("virtserialport,bus=vser0.0,chardev=agent0,name=org.qemu.guest_agent.0"));
});

test("gen1 argv: pc machine with its PIT, SeaBIOS, IDE, e1000 legacy adapter, startup order as bootindex", () => {
  const vm = sampleVm({
    generation: 1,
    hardDisks: [{ controllerType: "IDE", controllerNumber: 0, controllerLocation: 0, path: "/d/boot.vhdx", format: "vhdx" }],
    dvdDrives: [{ controllerType: "IDE", controllerNumber: 1, controllerLocation: 0, path: null }],
    networkAdapters: [
      { name: "Network Adapter", type: "Synthetic", macAddress: "00:15:5D:00:00:01", dynamicMac: true, switchName: "Default Switch", pciSlot: 8 },
      { name: "Legacy Network Adapter", type: "Legacy", macAddress: "00:15:5D:00:00:02", dynamicMac: true, switchName: "Default Switch", pciSlot: 11 },
    ],
  });
  const a = buildArgv(vm, { ...paths, nvram: undefined }, { accel: "tcg" });
  const machine = opt(a, "-machine")[0]!;
  assert.equal(machine, "pc,accel=tcg", "the PIT stays (no pit=off) on generation 1");
  assert.equal(a.some((x) => x.includes("pflash")), false);
  const devices = opt(a, "-device");
  // Hyper-V's default Gen1 startup order: CD, IDE, legacy network adapter.
  assert.ok(devices.includes("ide-cd,id=ide1-0,bus=ide.1,unit=0,bootindex=1"));
  assert.ok(devices.includes("ide-hd,id=ide0-0,drive=drive-ide0-0,bus=ide.0,unit=0,bootindex=2"));
  assert.ok(devices.includes("e1000,id=nic11,netdev=net11,mac=00:15:5d:00:00:02,addr=0xb,bootindex=3"));
  assert.ok(devices.includes("virtio-net-pci,id=nic8,netdev=net8,mac=00:15:5d:00:00:01,addr=0x8,romfile="));
  const vm2 = { ...vm, firmware: { ...vm.firmware, startupOrder: ["LegacyNetworkAdapter" as const, "IDE" as const, "CD" as const] } };
  const d2 = opt(buildArgv(vm2, paths, { accel: "kvm" }), "-device");
  assert.ok(d2.some((d) => d.startsWith("e1000") && d.endsWith("bootindex=1")));
  assert.ok(buildArgv(vm2, paths, { accel: "kvm" }).includes("host"), "KVM uses -cpu host");
});

test("gen1 floppy: a floppy device on the PC's controller, booted where the startup order puts Floppy", () => {
  const vm = sampleVm({ generation: 1, floppy: { path: "/f/boot.vfd" } });
  const devices = opt(buildArgv(vm, paths, { accel: "tcg" }), "-device");
  assert.ok(devices.includes("floppy,id=fd0,unit=0,drive=drive-fd0"), devices.join("\n"));
  const all = buildArgv(vm, paths, { accel: "tcg" });
  assert.equal(all[all.indexOf("isa-fdc.bootindexA=1") - 1], "-global", "QEMU 7.2 takes the floppy's boot position on its controller");
  const empty = opt(buildArgv(sampleVm({ generation: 1, floppy: { path: null } }), paths, { accel: "tcg" }), "-device");
  assert.ok(empty.includes("floppy,id=fd0,unit=0"));
});

test("argv is an array: a hostile name cannot inject options", () => {
  const vm = sampleVm({ name: "x,process=evil" });
  const a = buildArgv(vm, paths, { accel: "tcg", uefiCode: "/c.fd" });
  assert.equal(opt(a, "-name")[0], "guest=x,,process=evil,debug-threads=on");
});
