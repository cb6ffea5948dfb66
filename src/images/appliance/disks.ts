// The appliance's two boot disks, built on image files with partitioning tools and mtools'
// "image@@offset" addressing: no loop devices, no mounts, and never a tool that probes the
// host's own disks (grub-install / grub-bios-setup do; they are not used).
import { open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { bootCsv, grubCfg, syslinuxCfg } from "./guest-files.js";
import { run } from "./run.js";

const SECTOR = 512;
const MiB = 1024 * 1024;
/** The partition starts at 1 MiB in both layouts. */
const PART_START_LBA = 2048;
const PART_OFFSET = PART_START_LBA * SECTOR;
const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: "1", MTOOLSRC: "/dev/null" };

export interface BootFiles {
  vmlinuz: string;
  initrd: string;
  cmdline: string;
}

async function createSparse(path: string, bytes: number): Promise<void> {
  const fh = await open(path, "wx");
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
}

async function mtools(tool: string, image: string, args: string[]): Promise<void> {
  await run(tool, ["-i", `${image}@@${PART_OFFSET}`, ...args], { env: MTOOLS_ENV });
}

async function mcopy(image: string, src: string, dest: string): Promise<void> {
  await mtools("mcopy", image, ["-o", src, dest]);
}

/**
 * Gen1: MBR with one bootable FAT16 partition, SYSLINUX (its installer works through mtools and
 * takes the partition offset) and SYSLINUX's MBR boot code, booting on the first serial port.
 */
export async function buildGen1Disk(out: string, files: BootFiles, opts: { mbrBin: string; workDir: string; sizeMiB?: number }): Promise<void> {
  const sizeMiB = opts.sizeMiB ?? 64;
  const partSectors = (sizeMiB - 1) * (MiB / SECTOR);
  await createSparse(out, sizeMiB * MiB);
  await run("sfdisk", ["-q", out], { input: `label: dos\nstart=${PART_START_LBA}, size=${partSectors}, type=6, bootable\n` });
  // -H: the FAT's hidden-sectors field must equal the partition start for the boot sector to find itself.
  await mtools("mformat", out, ["-T", String(partSectors), "-h", "64", "-s", "32", "-H", String(PART_START_LBA), "-v", "VMHOSTBOOT", "::"]);
  const cfg = join(opts.workDir, "syslinux.cfg");
  await writeFile(cfg, syslinuxCfg(files.cmdline));
  await mcopy(out, cfg, "::/syslinux.cfg");
  await mcopy(out, files.vmlinuz, "::/vmlinuz");
  await mcopy(out, files.initrd, "::/initrd.img");
  await run("syslinux", ["--install", "--offset", String(PART_OFFSET), out], { env: MTOOLS_ENV });
  await writeMbrBootCode(out, opts.mbrBin);
}

/** Writes the 440 bytes of MBR boot code, leaving the disk signature and partition table alone. */
export async function writeMbrBootCode(image: string, mbrBin: string): Promise<void> {
  const code = await open(mbrBin, "r");
  const buf = Buffer.alloc(440);
  let n: number;
  try {
    n = (await code.read(buf, 0, 440, 0)).bytesRead;
  } finally {
    await code.close();
  }
  if (n < 400) throw new Error(`${mbrBin}: too short for MBR boot code (${n} bytes)`);
  const img = await open(image, "r+");
  try {
    await img.write(buf, 0, n, 0);
  } finally {
    await img.close();
  }
}

export interface Gen2BootChain {
  /** shimx64.efi.signed (Microsoft-signed shim with Debian's key). */
  shim: string;
  /** grubx64.efi.signed (Debian-signed GRUB; verifies the kernel through shim). */
  grub: string;
  /** mmx64.efi.signed (MokManager, which shim starts when a MOK change is pending). */
  mokManager: string;
}

/**
 * Gen2: GPT with one EFI system partition (FAT32) holding Debian's signed boot chain, so the
 * disk also boots under Secure Boot with the Microsoft UEFI CA: the removable-media path
 * \EFI\BOOT\BOOTX64.EFI = shim -> grubx64.efi -> the signed kernel, plus the same chain in
 * \EFI\debian as an OS installer leaves it (for an NVRAM boot entry). No fbx64.efi in
 * \EFI\BOOT: shim would run the fallback instead of GRUB.
 */
export async function buildGen2Disk(out: string, files: BootFiles, chain: Gen2BootChain, opts: { workDir: string; sizeMiB?: number }): Promise<void> {
  const sizeMiB = opts.sizeMiB ?? 96;
  const espMiB = sizeMiB - 2; // 1 MiB before, and room for the backup GPT after
  const espSectors = espMiB * (MiB / SECTOR);
  await createSparse(out, sizeMiB * MiB);
  // NB: no -q, with it sgdisk wrote no table (qemu-facts §1).
  await run("sgdisk", ["-n", `1:${PART_START_LBA}:+${espMiB}M`, "-t", "1:ef00", "-c", "1:EFI System Partition", out]);
  await mtools("mformat", out, ["-F", "-T", String(espSectors), "-h", "64", "-s", "32", "-H", String(PART_START_LBA), "-v", "VMHOST-ESP", "::"]);
  await mtools("mmd", out, ["::/EFI", "::/EFI/BOOT", "::/EFI/debian"]);
  const cfg = join(opts.workDir, "grub.cfg");
  await writeFile(cfg, grubCfg(files.cmdline));
  const csv = join(opts.workDir, "BOOTX64.CSV");
  await writeFile(csv, bootCsv());
  const copies: [string, string][] = [
    [chain.shim, "::/EFI/BOOT/BOOTX64.EFI"],
    [chain.grub, "::/EFI/BOOT/grubx64.efi"],
    [chain.mokManager, "::/EFI/BOOT/mmx64.efi"],
    [cfg, "::/EFI/BOOT/grub.cfg"],
    [chain.shim, "::/EFI/debian/shimx64.efi"],
    [chain.grub, "::/EFI/debian/grubx64.efi"],
    [chain.mokManager, "::/EFI/debian/mmx64.efi"],
    [cfg, "::/EFI/debian/grub.cfg"],
    [csv, "::/EFI/debian/BOOTX64.CSV"],
    [files.vmlinuz, "::/vmlinuz"],
    [files.initrd, "::/initrd.img"],
  ];
  for (const [src, dest] of copies) await mcopy(out, src, dest);
}
