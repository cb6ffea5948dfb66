import type { HardDisk, VmConfig, DvdDrive, NetworkAdapter } from "../../model/schema.js";
import { ovmfFwCfg } from "./fwcfg.js";
import { PCI_SLOTS, QEMU_IDS } from "./layout.js";
import type { BlockdevOptions, DeviceProps } from "./monitor.js";

/** Where this VM's QEMU talks to vmhost; chosen by the supervisor. */
export interface RuntimePaths {
  qmpSocket: string;
  serialSocket: string;
  consoleLog: string;
  agentSocket: string;
  pidFile: string;
  /** Gen2: this VM's own copy of the UEFI variable store. */
  nvram?: string;
  /** A graphical console: QEMU's VNC server on this unix socket (vmhostd proxies it after authentication). */
  vncSocket?: string;
  /**
   * Gen1: a file holding the serial port's I/O address (0x3f8, little-endian) for fw_cfg
   * etc/sercon-port, so SeaBIOS prints on the console ("No bootable device.") as on a screen.
   */
  biosSerialConsole?: string;
}

/** How an adapter reaches its switch; the Default Switch is QEMU user-mode networking. */
export type NetAttachment =
  | { kind: "user"; tftpDir?: string; bootFile?: string; ipv6?: boolean }
  | { kind: "tap"; ifname: string };

export interface EngineOptions {
  accel: "kvm" | "tcg";
  /** Gen2 firmware code (read-only pflash) and whether it is the Secure Boot build. */
  uefiCode?: string;
  secureBoot?: boolean;
  /** Gen1 BIOS image; QEMU's default SeaBIOS when absent. */
  bios?: string;
  networks?: Record<string, NetAttachment>;
  /** Start waiting for an incoming migration stream (used to restore saved state, and for live migration). */
  incoming?: string;
  /** Start with the guest paused (`-S`): an incoming migration then waits for `cont` once the state is in. */
  paused?: boolean;
  /** `-object` definitions (e.g. the TLS credentials of a live migration), as QEMU option strings. */
  objects?: string[];
  /** Extra fw_cfg string items, e.g. OVMF network-boot switches. */
  fwCfg?: Record<string, string>;
}

/** QEMU's option syntax doubles commas inside values. */
export function optValue(v: string): string {
  return v.replaceAll(",", ",,");
}

function blockdev(nodeName: string, path: string, format: "raw" | "qcow2" | "vhdx" | "vpc", readOnly: boolean): BlockdevOptions {
  return { driver: format, "node-name": nodeName, "read-only": readOnly, file: { driver: "file", filename: path, "read-only": readOnly } };
}

/** QEMU's block driver for a disk format: always explicit (never probed); VHD is QEMU's "vpc". */
export function qemuFormat(format: HardDisk["format"]): "raw" | "qcow2" | "vhdx" | "vpc" {
  return format === "vhd" ? "vpc" : format;
}

/** The block node of a hard disk, for -blockdev and for QMP blockdev-add. */
export function diskBlockdev(d: HardDisk): BlockdevOptions {
  return blockdev(QEMU_IDS.diskNode(d.controllerType, d.controllerNumber, d.controllerLocation), d.path, qemuFormat(d.format), false);
}

export function dvdBlockdev(d: DvdDrive & { path: string }): BlockdevOptions {
  return blockdev(QEMU_IDS.diskNode(d.controllerType, d.controllerNumber, d.controllerLocation), d.path, "raw", true);
}

/** The `-device` properties of a disk or DVD on its controller, for argv and for QMP device_add. */
export function storageDevice(
  d: { controllerType: "IDE" | "SCSI"; controllerNumber: number; controllerLocation: number },
  kind: "hd" | "cd",
  hasMedium: boolean,
  bootindex?: number,
): DeviceProps {
  const { controllerType: t, controllerNumber: c, controllerLocation: l } = d;
  const props: DeviceProps = { driver: t === "IDE" ? `ide-${kind}` : `scsi-${kind}`, id: QEMU_IDS.disk(t, c, l) };
  if (hasMedium) props["drive"] = QEMU_IDS.diskNode(t, c, l);
  if (t === "IDE") {
    props["bus"] = `ide.${c}`;
    props["unit"] = l;
  } else {
    // Hyper-V's SCSI location is the LUN on target 0: firmware paths read Scsi(0x0,location).
    props["bus"] = `${QEMU_IDS.scsiController(c)}.0`;
    props["scsi-id"] = 0;
    props["lun"] = l;
  }
  if (bootindex !== undefined) props["bootindex"] = bootindex;
  return props;
}

function deviceArg(props: Record<string, string | number | boolean>): string {
  const { driver, ...rest } = props;
  return [String(driver), ...Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "string" ? optValue(v) : v}`)].join(",");
}

function netdevArg(slot: number, att: NetAttachment): string {
  const id = QEMU_IDS.netdev(slot);
  if (att.kind === "tap") return `tap,id=${id},ifname=${optValue(att.ifname)},script=no,downscript=no`;
  const parts = [`user,id=${id}`];
  if (att.ipv6) parts.push("ipv6=on");
  if (att.tftpDir) parts.push(`tftp=${optValue(att.tftpDir)}`);
  if (att.bootFile) parts.push(`bootfile=${optValue(att.bootFile)}`);
  return parts.join(",");
}

function nicDevice(nic: NetworkAdapter, bootindex?: number): string {
  const props: DeviceProps = {
    driver: nic.type === "Legacy" ? "e1000" : "virtio-net-pci",
    id: QEMU_IDS.nic(nic.pciSlot),
    netdev: QEMU_IDS.netdev(nic.pciSlot),
    mac: nic.macAddress.toLowerCase(),
    addr: `0x${nic.pciSlot.toString(16)}`,
  };
  // Gen2: OVMF's own VirtioNetDxe + PXE stack (not iPXE) makes the PXEv4/PXEv6 entries Hyper-V has.
  // Gen1: the synthetic adapter cannot network-boot (as on Hyper-V); the legacy one keeps iPXE.
  if (nic.type === "Synthetic") props["romfile"] = "";
  if (bootindex !== undefined) props["bootindex"] = bootindex;
  return deviceArg(props);
}

/**
 * Gen1 carries Hyper-V's BIOS startup order to SeaBIOS as bootindex values.
 * Gen2 never gets a bootindex: the NVRAM alone decides (OVMF rewrites BootOrder otherwise).
 */
function gen1BootIndexes(vm: VmConfig): Map<string, number> {
  const out = new Map<string, number>();
  let next = 1;
  for (const cls of vm.firmware.startupOrder) {
    if (cls === "CD") for (const d of vm.dvdDrives) out.set(`dvd:${d.controllerNumber}:${d.controllerLocation}`, next++);
    if (cls === "IDE")
      for (const d of vm.hardDisks.filter((x) => x.controllerType === "IDE"))
        out.set(`disk:IDE:${d.controllerNumber}:${d.controllerLocation}`, next++);
    if (cls === "Floppy" && vm.floppy?.path) out.set("floppy", next++);
    if (cls === "LegacyNetworkAdapter")
      for (const n of vm.networkAdapters) if (n.type === "Legacy") out.set(`nic:${n.pciSlot}`, next++);
  }
  return out;
}

/** The Default Switch (user-mode networking), serving the VM's network boot payload over its TFTP when it has one. */
function defaultSwitchAttachment(vm: VmConfig): NetAttachment {
  const p = vm.firmware.networkBootPayload;
  return p ? { kind: "user", tftpDir: p.dir, bootFile: p.file } : { kind: "user" };
}

/** The complete QEMU argv (without the binary) for a VM. Pure: same inputs, same argv. */
export function buildArgv(vm: VmConfig, paths: RuntimePaths, opts: EngineOptions): string[] {
  const a: string[] = [];
  const gen2 = vm.generation === 2;
  a.push("-name", `guest=${optValue(vm.name)},debug-threads=on`);
  a.push("-uuid", vm.id);
  a.push("-no-user-config", "-nodefaults");
  if (paths.vncSocket) {
    // A display: standard VGA plus a USB tablet (absolute pointer) for noVNC; VNC only on a unix socket.
    a.push("-display", "none", "-vnc", `unix:${optValue(paths.vncSocket)}`, "-device", "VGA,addr=0x7");
    a.push("-device", "qemu-xhci,id=usb0,addr=0x1e", "-device", "usb-tablet,bus=usb0.0");
  } else a.push("-display", "none");
  a.push("-msg", "timestamp=on");
  a.push("-pidfile", paths.pidFile);

  if (gen2) {
    if (!opts.uefiCode || !paths.nvram) throw new Error("a generation 2 VM needs UEFI code and its NVRAM file");
    a.push("-blockdev", JSON.stringify({ driver: "file", "node-name": "fw-code-file", filename: opts.uefiCode, "read-only": true } satisfies BlockdevOptions));
    a.push("-blockdev", JSON.stringify({ driver: "raw", "node-name": "fw-code", file: "fw-code-file", "read-only": true }));
    a.push("-blockdev", JSON.stringify({ driver: "file", "node-name": "fw-vars-file", filename: paths.nvram }));
    a.push("-blockdev", JSON.stringify({ driver: "raw", "node-name": "fw-vars", file: "fw-vars-file" }));
    // Hyper-V Gen2 has no PIT, no IDE/SATA, no PS/2: only the HPET stays (Linux needs one timer).
    const machine = ["q35", `accel=${opts.accel}`, "pit=off", "sata=off", "vmport=off", "pflash0=fw-code", "pflash1=fw-vars"];
    if (opts.secureBoot) machine.push("smm=on");
    a.push("-machine", machine.join(","));
    if (opts.secureBoot) a.push("-global", "driver=cfi.pflash01,property=secure,value=on");
  } else {
    a.push("-machine", ["pc", `accel=${opts.accel}`].join(","));
    if (opts.bios) a.push("-bios", opts.bios);
    if (paths.biosSerialConsole) a.push("-fw_cfg", `name=etc/sercon-port,file=${optValue(paths.biosSerialConsole)}`);
    a.push("-boot", "strict=on");
  }
  if (opts.accel === "kvm") a.push("-cpu", "host");
  a.push("-smp", String(vm.processorCount));
  a.push("-m", `${vm.memoryMiB}M`);
  a.push("-rtc", "base=utc");

  // Console: QEMU itself appends everything to the log, so capture never depends on vmhost
  // being alive; the socket is for live attach.
  a.push(
    "-chardev",
    `socket,id=serial0,path=${optValue(paths.serialSocket)},server=on,wait=off,logfile=${optValue(paths.consoleLog)},logappend=on`,
  );
  a.push("-serial", "chardev:serial0");
  a.push("-chardev", `socket,id=qmp0,path=${optValue(paths.qmpSocket)},server=on,wait=off`);
  a.push("-mon", "chardev=qmp0,mode=control");

  // Guest agent channel (integration services).
  a.push("-device", `virtio-serial-pci,id=vser0,addr=0x${PCI_SLOTS.agentChannel.toString(16)}`);
  a.push("-chardev", `socket,id=agent0,path=${optValue(paths.agentSocket)},server=on,wait=off`);
  a.push("-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.qemu.guest_agent.0");

  for (const [k, v] of Object.entries({ ...ovmfFwCfg(vm), ...opts.fwCfg })) a.push("-fw_cfg", `name=${optValue(k)},string=${optValue(v)}`);

  const boot = gen2 ? new Map<string, number>() : gen1BootIndexes(vm);

  const scsiControllers = new Set<number>();
  for (const d of [...vm.hardDisks, ...vm.dvdDrives]) if (d.controllerType === "SCSI") scsiControllers.add(d.controllerNumber);
  // Gen2 always has SCSI controller 0, as on Hyper-V, so disks can be hot-added.
  if (gen2) scsiControllers.add(0);
  for (const c of [...scsiControllers].sort()) {
    a.push("-device", `virtio-scsi-pci,id=${QEMU_IDS.scsiController(c)},addr=0x${PCI_SLOTS.scsiController(c).toString(16)}`);
  }

  for (const d of vm.hardDisks) {
    a.push("-blockdev", JSON.stringify(diskBlockdev(d)));
    // Keyed by controller type too: a Gen1 VM's SCSI 0:0 is not its IDE 0:0 (which has the bootindex).
    a.push("-device", deviceArg(storageDevice(d, "hd", true, boot.get(`disk:${d.controllerType}:${d.controllerNumber}:${d.controllerLocation}`))));
  }
  for (const d of vm.dvdDrives) {
    if (d.path) a.push("-blockdev", JSON.stringify(dvdBlockdev({ ...d, path: d.path })));
    a.push(
      "-device",
      deviceArg(storageDevice(d, "cd", d.path !== null, boot.get(`dvd:${d.controllerNumber}:${d.controllerLocation}`))),
    );
  }

  if (vm.floppy && !gen2) {
    // The PC's built-in floppy controller (Hyper-V Gen1 has one virtual floppy drive).
    if (vm.floppy.path) a.push("-blockdev", JSON.stringify(blockdev("drive-fd0", vm.floppy.path, "raw", false)));
    const fd: DeviceProps = { driver: "floppy", id: "fd0", unit: 0 };
    if (vm.floppy.path) fd["drive"] = "drive-fd0";
    const bi = boot.get("floppy");
    if (bi !== undefined) fd["bootindex"] = bi;
    a.push("-device", deviceArg(fd));
  }

  for (const nic of vm.networkAdapters) {
    const att = opts.networks?.[nic.name] ?? defaultSwitchAttachment(vm);
    a.push("-netdev", netdevArg(nic.pciSlot, att));
    a.push("-device", nicDevice(nic, boot.get(`nic:${nic.pciSlot}`)));
  }

  for (const o of opts.objects ?? []) a.push("-object", o);
  if (opts.paused) a.push("-S");
  if (opts.incoming) a.push("-incoming", opts.incoming);
  return a;
}

/**
 * The `-object` of QEMU's x509 TLS credentials (crypto/tlscredsx509.c): `dir` holds ca-cert.pem and
 * server-cert.pem/server-key.pem (endpoint server) or client-cert.pem/client-key.pem (client);
 * the server verifies the client's certificate against the CA.
 */
export function tlsCredsObject(id: string, dir: string, endpoint: "server" | "client"): string {
  return `tls-creds-x509,id=${optValue(id)},dir=${optValue(dir)},endpoint=${endpoint},verify-peer=${endpoint === "server" ? "on" : "off"}`;
}
