// The appliance's initramfs: busybox, /init, kernel modules, qemu-ga and efibootmgr with their
// libraries, as one gzip'd newc archive. It stays the root filesystem (there is no switch_root).
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { FsTree, gzipInitramfs, writeNewc } from "./cpio.js";
import {
  ETC_FILES,
  MODULES_LOAD_FILE,
  forcedPowerScript,
  initScript,
  osRelease,
  powerButtonScript,
  fsfreezeHookScript,
  shutdownScript,
  udhcpcScript,
} from "./guest-files.js";
import { type KernelModule, ModuleTree, installedModulePath, readModuleFile, renderModulesDep } from "./modinfo.js";
import { run } from "./run.js";

/** Drivers for both generations' devices (Gen1: IDE, e1000, tulip; Gen2: virtio, SCSI, AHCI), plus the ESP's filesystem. */
export const APPLIANCE_MODULES = [
  "virtio_pci", "virtio_console", "virtio_scsi", "virtio_blk", "virtio_net", "virtio_balloon",
  "sd_mod", "sr_mod", "ata_piix", "ahci", "e1000", "tulip",
  "button", "evdev", "efivarfs", "qemu_fw_cfg",
  "vfat", "nls_cp437", "nls_ascii", "isofs",
  // ext4 (with crc32c, which it asks the crypto API for at mount time) gives VSS a freezable file system.
  "ext4", "crc32c_generic",
] as const;

/** Fixed timestamp for every archive member, so equal inputs give equal bytes. */
const ARCHIVE_MTIME = 0;

export interface InitramfsInputs {
  busyboxRoot: string;
  kernelRoot: string;
  kernelRelease: string;
  hostPrograms: { qemuGa: string; efibootmgr: string };
  hostLibraries: readonly string[];
  debianVersion: string;
  modules?: readonly string[];
}

export interface Initramfs {
  image: Buffer;
  /** Modules in load order. */
  modules: KernelModule[];
  /** Requested modules that this kernel has built in. */
  builtin: string[];
  fileCount: number;
}

export async function buildInitramfs(i: InitramfsInputs): Promise<Initramfs> {
  const t = new FsTree();
  for (const d of ["bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc", "dev", "proc", "sys", "run", "mnt", "var/log", "var/lib"]) t.dir(d);
  t.dir("tmp", 0o1777).dir("root", 0o700);
  t.dir("var/lib/hyperv"); // hv_kvp_daemon-style KVP pool files live here
  t.symlink("var/run", "../run");
  t.symlink("var/tmp", "../tmp");
  // The kernel opens /dev/console for /init before devtmpfs is mounted.
  t.charDevice("dev/console", 5, 1, 0o600);
  t.charDevice("dev/null", 1, 3, 0o666);

  t.file("init", initScript({ kernelRelease: i.kernelRelease }), 0o755);
  t.file("sbin/shutdown", shutdownScript(), 0o755);
  t.file("etc/qemu/fsfreeze-hook", fsfreezeHookScript(), 0o755);
  for (const a of ["poweroff", "reboot", "halt"] as const) t.file(`sbin/${a}`, forcedPowerScript(a), 0o755);
  t.file("etc/acpi/PWRF/00000080", powerButtonScript(), 0o755);
  t.file("etc/udhcpc/default.script", udhcpcScript(), 0o755);
  for (const [path, content] of Object.entries(ETC_FILES)) t.file(path, content);
  t.file("etc/os-release", osRelease({ debianVersion: i.debianVersion, kernelRelease: i.kernelRelease }));
  t.symlink("usr/lib/os-release", "../../etc/os-release");
  t.symlink("etc/mtab", "/proc/self/mounts");

  const busybox = join(i.busyboxRoot, "bin/busybox");
  t.file("bin/busybox", await readFile(busybox), 0o755);
  t.file("usr/sbin/qemu-ga", await readFile(i.hostPrograms.qemuGa), 0o755);
  t.file("usr/bin/efibootmgr", await readFile(i.hostPrograms.efibootmgr), 0o755);
  // At the paths ldd printed: the dynamic loader's built-in search path covers them without ld.so.cache.
  for (const lib of i.hostLibraries) t.file(lib, await readFile(lib), 0o755);

  // Applet links last, so they never replace a real file (e.g. the forced poweroff above).
  const applets = (await run(busybox, ["--list-full"])).stdout.split("\n").map((s) => s.trim()).filter(Boolean);
  for (const a of applets) if (a !== "linuxrc" && !t.has(a)) t.symlink(a, "/bin/busybox");

  const tree = await ModuleTree.open(join(i.kernelRoot, "lib/modules", i.kernelRelease));
  const { order, builtin } = await tree.resolve(i.modules ?? APPLIANCE_MODULES);
  const modDir = `lib/modules/${i.kernelRelease}`;
  for (const m of order) t.file(`${modDir}/${installedModulePath(m.relPath)}`, await readModuleFile(join(tree.root, m.relPath)));
  t.file(`${modDir}/modules.dep`, renderModulesDep(order));
  try {
    t.file(`${modDir}/modules.builtin`, await readFile(join(tree.root, "modules.builtin")));
  } catch {
    // optional: only lets modprobe accept built-in names quietly
  }
  t.file(MODULES_LOAD_FILE, order.map((m) => installedModulePath(m.relPath)).join("\n") + "\n");

  const entries = t.entries();
  return { image: gzipInitramfs(writeNewc(entries, { mtime: ARCHIVE_MTIME })), modules: order, builtin, fileCount: entries.length };
}
