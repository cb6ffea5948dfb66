// Inspecting a Generation 1 boot disk: can it become a Generation 2 (UEFI, GPT) boot disk,
// and exactly how. Everything here only reads the image.
import { randomUUID } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { BootConfigError, type BootEntry, grubenvSavedEntry, parseGrubConfig, parseSyslinuxConfig } from "./bootconfig.js";
import type { Gen2BootChain } from "./boot-chain.js";
import { type FsProbe, type FsReader, type Partition, SECTOR, fatFreeBytes, fsReader, probeFs, readAt, readPartitionTable } from "./layout.js";
import { authenticodeSignatures, commonName, kernelHeader, shimVendorCertificate, signedBy } from "./pe.js";

/** Disk image formats qemu-img reads and writes here ("vpc" is VHD). */
export type ImageFormat = "raw" | "qcow2" | "vhdx" | "vpc";

/** Hyper-V's Secure Boot template names (as src/model's SecureBootTemplate; images/ may not import model/). */
export type SecureBootTemplateName = "MicrosoftWindows" | "MicrosoftUEFICertificateAuthority" | "OpenSourceShieldedVM";

export type RefusalCode =
  | "no-partition-table"
  | "extended-partition"
  | "too-many-primary-partitions"
  | "no-room-before-first-partition"
  | "windows-needs-mbr2gpt"
  | "unknown-boot-loader"
  | "boot-config-unreadable"
  | "boot-entry-unsupported"
  | "kernel-not-found"
  | "not-a-linux-kernel"
  | "esp-has-loader"
  | "gpt-without-uefi-loader";

/** Why a disk cannot be converted, and what the user can do about it. */
export interface Refusal {
  code: RefusalCode;
  reason: string;
  fix: string;
}

export interface PlannedPartition extends Partition {
  fs?: FsProbe;
}

export interface FileRef {
  partition: number;
  path: string;
  bytes: number;
}

/** The guest's own boot entry, carried over to the new grub.cfg. */
export interface BootPlan {
  loader: "syslinux" | "extlinux" | "grub";
  /** The configuration file that was read. */
  config: { partition: number; path: string };
  label?: string;
  kernel: FileRef & { version?: string; efiStub: boolean; signer?: string };
  initrd: FileRef[];
  /** The command line as the guest's configuration has it. */
  cmdline: string;
  /** The command line the new grub.cfg passes (PARTUUIDs of this disk rewritten). */
  newCmdline: string;
  /** The kernel's file system, as GRUB will find it. */
  kernelFs: { partition: number; type: string; uuid?: string };
}

export type EspPlan =
  /** An existing FAT partition (the one SYSLINUX boots from) is re-typed EF00; its files stay. */
  | { action: "repurpose"; partition: number; fsVersion: string; freeBytes: number; neededBytes: number }
  /** A new FAT32 partition; sizes in sectors. */
  | { action: "create"; partition: number; startLba: number; sizeLba: number }
  /** A GPT disk's existing EFI System Partition (nothing is written). */
  | { action: "existing"; partition: number };

export type LoaderPlan =
  /** Debian's signed shim + GRUB on the removable-media path, with a grub.cfg for the guest's entry. */
  | { kind: "debian-shim"; boot: BootPlan; efiFiles: { path: string; source: string }[]; grubCfg: string }
  /** The disk already boots under UEFI with this loader (e.g. Windows after MBR2GPT). */
  | { kind: "existing"; path: string; signer?: string };

/**
 * How a Gen1 boot disk becomes a Gen2 one. Sizes in bytes unless named Lba (512-byte sectors).
 * `steps` is the plan in words, in order; `warnings` are what the user should know but does
 * not stop the conversion.
 */
export interface ConversionPlan {
  source: { path: string; format: ImageFormat; virtualSize: number };
  /** The table as found. */
  table: { label: "dos" | "gpt"; id: string; partitions: PlannedPartition[] };
  /** Undefined when the disk is already GPT. */
  gpt?: { diskGuid: string; partitionGuids: Record<string, string> };
  resize?: { fromBytes: number; toBytes: number; why: string };
  esp: EspPlan;
  loader: LoaderPlan;
  secureBoot: { enabled: boolean; template: SecureBootTemplateName; why: string };
  steps: string[];
  warnings: string[];
}

export type Inspection = { convertible: true; plan: ConversionPlan } | { convertible: false; refusals: Refusal[]; warnings: string[] };

export const ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/** Size of an ESP vmhost creates: MBR2GPT's 100 MB (MicrosoftDocs mbr-to-gpt.md), FAT32. */
export const NEW_ESP_BYTES = 100 * 1024 * 1024;
const MiB = 1024 * 1024;
const ALIGN_LBA = 2048;
/** GPT: the header at LBA 1 and 128 entries of 128 bytes (32 sectors) before the first usable LBA (UEFI spec §5.3). */
const GPT_FRONT_LBA = 34;
/** ... and the same behind the last usable LBA, for the backup (33 sectors: entries + header). */
const GPT_BACK_LBA = 33;
const EXTENDED_TYPES = new Set(["5", "f", "85"]);
/** GRUB 2's boot.img messages (grub-core/boot/i386/pc/boot.S: notification_string ... general_error_string). */
const GRUB_BOOT_IMG = Buffer.from("GRUB \0Geom\0Hard Disk\0Read\0 Error", "latin1");
const EFI_REMOVABLE = "\\EFI\\BOOT\\BOOTX64.EFI";

const SYSLINUX_CONFIGS = [
  "/boot/syslinux/syslinux.cfg",
  "/syslinux/syslinux.cfg",
  "/syslinux.cfg",
  "/boot/extlinux/extlinux.conf",
  "/extlinux/extlinux.conf",
  "/extlinux.conf",
];
const GRUB_CONFIGS = ["/boot/grub/grub.cfg", "/grub/grub.cfg"];

const UEFI_CA_NAMES = ["Microsoft Corporation UEFI CA 2011", "Microsoft UEFI CA 2023"];
const WINDOWS_CA_NAMES = ["Microsoft Windows Production PCA 2011", "Windows UEFI CA 2023"];

interface Scanned {
  part: PlannedPartition;
  offset: number;
  reader?: FsReader;
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(bytes % MiB === 0 ? 0 : 1)} MiB`;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * Which Secure Boot template trusts a loader, from the issuer of its Authenticode signer
 * (template contents: src/firmware/secureboot.ts): the Microsoft UEFI CA (third-party
 * loaders such as shim) or the Windows Production PCA (Windows' boot manager).
 */
export function templateForLoader(image: Buffer): { template?: SecureBootTemplateName; signer?: string; issuer?: string } {
  for (const sig of authenticodeSignatures(image)) {
    const issuer = sig.signer ? commonName(sig.signer.issuer) : undefined;
    const signer = sig.signer ? commonName(sig.signer.subject) : undefined;
    if (issuer && UEFI_CA_NAMES.includes(issuer)) return { template: "MicrosoftUEFICertificateAuthority", signer, issuer };
    if (issuer && WINDOWS_CA_NAMES.includes(issuer)) return { template: "MicrosoftWindows", signer, issuer };
  }
  const first = authenticodeSignatures(image)[0]?.signer;
  return first ? { signer: commonName(first.subject), issuer: commonName(first.issuer) } : {};
}

/** Rewrites `X=PARTUUID=<this disk's signature>-NN` options to the partition's new GPT PARTUUID. */
export function rewriteCmdline(cmdline: string, diskSignature: string, partitionGuids: Record<string, string>): { cmdline: string; rewritten: string[] } {
  const rewritten: string[] = [];
  const out = cmdline
    .split(/\s+/)
    .filter(Boolean)
    .map((tok) => {
      const m = /^([^=]+=)PARTUUID=([0-9a-fA-F]{8})-([0-9a-fA-F]{2})(\/.*)?$/.exec(tok);
      if (!m || m[2]!.toLowerCase() !== diskSignature.toLowerCase()) return tok;
      const guid = partitionGuids[String(parseInt(m[3]!, 16))];
      if (!guid) return tok;
      const next = `${m[1]}PARTUUID=${guid.toLowerCase()}${m[4] ?? ""}`;
      rewritten.push(`${tok} -> ${next}`);
      return next;
    });
  return { cmdline: out.join(" "), rewritten };
}

/** The grub.cfg written to \EFI\BOOT: boots the guest's entry. GRUB's $root starts as the ESP. */
export function convertedGrubCfg(b: Omit<BootPlan, "newCmdline"> & { newCmdline: string }, espPartition: number): string {
  const lines = [
    `# Written by vmhost convert-generation: the ${b.loader} entry${b.label ? ` "${b.label}"` : ""} of ${b.config.path} (partition ${b.config.partition}).`,
    "set timeout=0",
    "set timeout_style=hidden",
  ];
  if (b.kernelFs.partition !== espPartition) {
    if (!b.kernelFs.uuid) throw new Error(`partition ${b.kernelFs.partition} has no file system UUID to search for`);
    // GRUB compares file system UUIDs case-insensitively (grub-core/commands/search.c); it prints them lower case.
    lines.push(`search --no-floppy --fs-uuid --set=root ${b.kernelFs.uuid.toLowerCase()}`);
  }
  lines.push(`echo "vmhost convert-generation: GRUB is loading ${b.kernel.path}"`);
  lines.push(`linux ${b.kernel.path}${b.newCmdline ? " " + b.newCmdline : ""}`);
  if (b.initrd.length) lines.push(`initrd ${b.initrd.map((i) => i.path).join(" ")}`);
  lines.push("boot", "");
  return lines.join("\n");
}

/**
 * Inspects a raw image (read-only) and returns the plan or the refusals. `source` names the
 * image the user gave (the raw file may be a copy of it). `chain` is the boot chain that
 * would be installed (its signatures decide the Secure Boot template and whether the
 * guest's kernel can boot with Secure Boot on).
 */
export async function inspectRaw(raw: string, source: { path: string; format: ImageFormat }, chain: Gen2BootChain): Promise<Inspection> {
  const size = (await stat(raw)).size;
  const totalLba = Math.floor(size / SECTOR);
  const refusals: Refusal[] = [];
  const warnings: string[] = [];
  const refuse = (code: RefusalCode, reason: string, fix: string) => refusals.push({ code, reason, fix });
  const inGuest =
    "or convert inside the guest while it is still Generation 1: sgdisk --mbrtogpt, add an EFI System Partition, then grub-install --target=x86_64-efi --removable (or apt install shim-signed grub-efi-amd64-signed)";

  const table = await readPartitionTable(raw);
  if (!table || table.partitions.length === 0) {
    refuse("no-partition-table", `${source.path} has no partitions (no MBR or GPT partition table sfdisk recognizes)`, "choose the VM's boot disk: convert-generation converts the disk the guest boots from");
    return { convertible: false, refusals, warnings };
  }
  const scanned: Scanned[] = [];
  for (const p of table.partitions) {
    const offset = p.startLba * SECTOR;
    const isExtended = table.label === "dos" && EXTENDED_TYPES.has(p.type);
    const fs = isExtended ? undefined : await probeFs(raw, offset, p.sizeLba * SECTOR);
    const part: PlannedPartition = { ...p, ...(fs ? { fs } : {}) };
    const reader = fsReader(raw, offset, fs);
    scanned.push({ part, offset, ...(reader ? { reader } : {}) });
  }
  const partitions = scanned.map((s) => s.part);
  const tableFacts = { label: table.label, id: table.id, partitions };

  if (table.label === "gpt") return inspectGpt(source, size, tableFacts, scanned, refuse, refusals, warnings);

  // MBR rules (MBR2GPT's, MicrosoftDocs windows/deployment/mbr-to-gpt.md "Disk validation").
  const extended = table.partitions.filter((p) => EXTENDED_TYPES.has(p.type));
  const logical = table.partitions.filter((p) => p.number > 4);
  if (extended.length) {
    refuse(
      "extended-partition",
      `partition ${extended.map((p) => p.number).join(", ")} is an extended partition` +
        (logical.length ? ` holding logical partition${logical.length > 1 ? "s" : ""} ${logical.map((p) => p.number).join(", ")}` : "") +
        "; vmhost converts only disks whose partitions are all primary (MBR2GPT's rule too): logical partitions are found through a chain of boot records inside the extended one that a GPT does not have",
      `move the data of the logical partitions to primary partitions (at most 3) inside the guest first, ${inGuest}`,
    );
  }
  const primaries = table.partitions.filter((p) => p.number <= 4 && !EXTENDED_TYPES.has(p.type));
  if (primaries.length + extended.length > 3) {
    refuse(
      "too-many-primary-partitions",
      `the MBR has ${primaries.length + extended.length} primary partitions; vmhost converts disks with at most 3 (MBR2GPT's rule), so that an EFI System Partition can always be added`,
      `remove or merge a partition inside the guest first (a Gen1 VM), ${inGuest}`,
    );
  }
  const first = [...table.partitions].sort((a, b) => a.startLba - b.startLba)[0]!;
  if (first.startLba < GPT_FRONT_LBA) {
    refuse(
      "no-room-before-first-partition",
      `partition ${first.number} starts at sector ${first.startLba}; a GPT needs sectors 1-33 for its header and partition entries`,
      `move partition ${first.number} to start at 1 MiB (sector 2048) inside the guest or with a partition editor, then try again`,
    );
  }

  // Which BIOS boot loader runs: GRUB's boot.img in the MBR, else the active partition's.
  const mbr = await readAt(raw, 0, 512);
  const grubInMbr = mbr.subarray(0, 440).includes(GRUB_BOOT_IMG);
  const active = scanned.find((s) => s.part.bootable) ?? (scanned.length === 1 ? scanned[0] : undefined);
  const order = [...(active ? [active] : []), ...scanned.filter((s) => s !== active)];
  let entry: { loader: BootPlan["loader"]; at: Scanned; path: string; entry: BootEntry } | undefined;
  const configErrors: string[] = [];

  const tryGrub = async (): Promise<void> => {
    for (const s of order) {
      if (!s.reader) continue;
      for (const path of GRUB_CONFIGS) {
        const text = await s.reader.read(path);
        if (!text) continue;
        const env = await s.reader.read(path.replace(/grub\.cfg$/, "grubenv"));
        const saved = env ? grubenvSavedEntry(env.toString("utf8")) : undefined;
        try {
          entry = { loader: "grub", at: s, path, entry: parseGrubConfig(text.toString("utf8"), saved ? { savedEntry: saved } : {}) };
        } catch (e) {
          if (!(e instanceof BootConfigError)) throw e;
          configErrors.push(`${path} on partition ${s.part.number}: ${e.message}`);
        }
        return;
      }
    }
  };
  const trySyslinux = async (s: Scanned): Promise<boolean> => {
    if (!s.reader) return false;
    for (const path of SYSLINUX_CONFIGS) {
      const text = await s.reader.read(path);
      if (!text) continue;
      const dir = path.slice(0, path.lastIndexOf("/")) || "/";
      const loader = path.endsWith("extlinux.conf") || s.reader.kind === "ext" ? "extlinux" : "syslinux";
      try {
        entry = { loader, at: s, path, entry: parseSyslinuxConfig(text.toString("utf8"), dir) };
      } catch (e) {
        if (!(e instanceof BootConfigError)) throw e;
        configErrors.push(`${path} on partition ${s.part.number}: ${e.message}`);
      }
      return true;
    }
    return false;
  };

  if (grubInMbr) await tryGrub();
  else if (active) {
    const vbr = await readAt(raw, active.offset, 512);
    const found = await trySyslinux(active);
    if (!found && vbr.includes(Buffer.from("GRUB", "latin1"))) await tryGrub();
  }
  if (!entry && configErrors.length === 0) {
    const ntfs = scanned.filter((s) => s.part.fs?.type === "ntfs");
    if (ntfs.length) {
      refuse(
        "windows-needs-mbr2gpt",
        `partition ${ntfs.map((s) => s.part.number).join(", ")} is NTFS and no Linux boot loader was found: a Windows guest, whose boot configuration (BCD) only Windows can move to UEFI`,
        "in the guest, while it is still Generation 1, run `MBR2GPT /convert /allowFullOS` as Administrator (`MBR2GPT /validate /allowFullOS` checks first), shut it down, then run convert-generation again: a GPT disk with Windows' EFI System Partition is taken as it is",
      );
    } else {
      const what = grubInMbr
        ? "the MBR holds GRUB's boot code but no partition vmhost can read (FAT, ext2/3/4) has /boot/grub/grub.cfg or /grub/grub.cfg"
        : active
          ? `the active partition ${active.part.number} (${active.part.fs?.type ?? `type ${active.part.type}`}) has no SYSLINUX/EXTLINUX configuration (${SYSLINUX_CONFIGS.join(", ")}) and the MBR has no GRUB boot code`
          : "no partition is marked active and the MBR has no GRUB boot code";
      refuse("unknown-boot-loader", `no SYSLINUX, EXTLINUX or GRUB was recognized: ${what}`, `install GRUB or SYSLINUX in the guest, ${inGuest}`);
    }
  }
  for (const err of configErrors) {
    refuse("boot-entry-unsupported", `the boot loader's default entry cannot be carried over: ${err}`, `make the default entry boot a Linux kernel with an initrd inside the guest, ${inGuest}`);
  }
  if (!entry || refusals.length) return { convertible: false, refusals, warnings };
  for (const n of entry.entry.notes) warnings.push(`${entry.path}: ${n}`);

  // Where the kernel's file system is.
  const hint = entry.entry.root;
  let kernelAt: Scanned | undefined;
  if (hint.kind === "same") kernelAt = entry.at;
  else if (hint.kind === "fs-uuid") kernelAt = scanned.find((s) => s.part.fs?.uuid?.toLowerCase() === hint.value.toLowerCase());
  else if (hint.kind === "fs-label") kernelAt = scanned.find((s) => s.part.fs?.label === hint.value);
  else if (hint.kind === "partition") kernelAt = scanned.find((s) => s.part.number === hint.partition);
  else if (hint.kind === "file") {
    for (const s of scanned) if (s.reader && (await s.reader.read(hint.value))) kernelAt = s;
  }
  const hintText = hint.kind === "same" ? `partition ${entry.at.part.number}` : hint.kind === "partition" ? `partition ${hint.partition}` : `${hint.kind} ${hint.value}`;
  if (!kernelAt) {
    refuse("kernel-not-found", `${entry.path} boots ${entry.entry.kernel} from ${hintText}, which is not on this disk`, `check the guest's boot configuration; a kernel on another disk cannot be moved by vmhost`);
    return { convertible: false, refusals, warnings };
  }
  if (!kernelAt.reader) {
    refuse(
      "boot-config-unreadable",
      `the kernel ${entry.entry.kernel} is on partition ${kernelAt.part.number} (${kernelAt.part.fs?.type ?? "unknown file system"}), which vmhost cannot read offline (it reads FAT and ext2/3/4) to check the kernel and initrd`,
      inGuest.replace(/^or /, ""),
    );
    return { convertible: false, refusals, warnings };
  }
  const kernelBytes = await kernelAt.reader.read(entry.entry.kernel);
  if (!kernelBytes) {
    refuse("kernel-not-found", `${entry.path} boots ${entry.entry.kernel}, which is not on partition ${kernelAt.part.number}`, `fix the boot configuration in the guest so that it boots, then try again`);
    return { convertible: false, refusals, warnings };
  }
  const kh = kernelHeader(kernelBytes);
  if (!kh) {
    refuse("not-a-linux-kernel", `${entry.entry.kernel} on partition ${kernelAt.part.number} is not an x86 Linux kernel (no boot protocol header "HdrS")`, `make the default entry boot a Linux kernel, ${inGuest}`);
    return { convertible: false, refusals, warnings };
  }
  const initrd: FileRef[] = [];
  for (const p of entry.entry.initrd) {
    const b = await kernelAt.reader.read(p);
    if (!b) {
      refuse("kernel-not-found", `${entry.path} loads the initrd ${p}, which is not on partition ${kernelAt.part.number}`, "fix the boot configuration in the guest so that it boots, then try again");
      return { convertible: false, refusals, warnings };
    }
    initrd.push({ partition: kernelAt.part.number, path: p, bytes: b.length });
  }

  // The ESP: re-type the FAT partition SYSLINUX boots from when the boot chain fits, else a new one.
  const chainFiles = await Promise.all([chain.shim, chain.grub, chain.mokManager].map((p) => readFile(p)));
  const [shimBytes, grubBytes] = chainFiles as [Buffer, Buffer, Buffer];
  const neededBytes = chainFiles.reduce((a, b) => a + alignUp(b.length, 64 * 1024), 0) + 1 * MiB;
  let esp: EspPlan | undefined;
  if (entry.at.part.fs?.type === "vfat" && entry.at === kernelAt) {
    if (await entry.at.reader!.read("/EFI/BOOT/BOOTX64.EFI")) {
      refuse(
        "esp-has-loader",
        `partition ${entry.at.part.number} already has ${EFI_REMOVABLE}; vmhost does not overwrite a UEFI loader it did not put there`,
        `remove it inside the guest if it is stale, or move the disk to a Generation 2 VM as it is if that loader boots the guest`,
      );
      return { convertible: false, refusals, warnings };
    }
    const free = await fatFreeBytes(raw, entry.at.offset);
    if (free >= neededBytes) esp = { action: "repurpose", partition: entry.at.part.number, fsVersion: entry.at.part.fs.version ?? "FAT", freeBytes: free, neededBytes };
    else warnings.push(`partition ${entry.at.part.number} has ${mib(free)} free, less than the ${mib(neededBytes)} the boot chain needs; a new EFI System Partition is made instead`);
  }
  const used = new Set(table.partitions.map((p) => p.number));
  let maxEnd = Math.max(...table.partitions.map((p) => p.startLba + p.sizeLba - 1));
  let newTotal = totalLba;
  if (!esp) {
    const sizeLba = NEW_ESP_BYTES / SECTOR;
    const number = [1, 2, 3, 4].find((n) => !used.has(n))!;
    // First fit in the gaps between partitions, else behind the last one (growing the disk).
    const sorted = [...table.partitions].sort((a, b) => a.startLba - b.startLba);
    let start: number | undefined;
    let cursor = ALIGN_LBA;
    for (const p of sorted) {
      if (alignUp(cursor, ALIGN_LBA) + sizeLba <= p.startLba) {
        start = alignUp(cursor, ALIGN_LBA);
        break;
      }
      cursor = Math.max(cursor, p.startLba + p.sizeLba);
    }
    if (start === undefined) start = alignUp(maxEnd + 1, ALIGN_LBA);
    esp = { action: "create", partition: number, startLba: start, sizeLba };
    maxEnd = Math.max(maxEnd, start + sizeLba - 1);
  }
  let resize: ConversionPlan["resize"];
  if (maxEnd > totalLba - 1 - GPT_BACK_LBA) {
    newTotal = alignUp(maxEnd + 1 + GPT_BACK_LBA, MiB / SECTOR);
    const why =
      esp.action === "create" && esp.startLba + esp.sizeLba > totalLba - GPT_BACK_LBA
        ? `room for the new ${mib(NEW_ESP_BYTES)} EFI System Partition and the backup GPT (${GPT_BACK_LBA} sectors) behind it`
        : `partition ${table.partitions.find((p) => p.startLba + p.sizeLba - 1 > totalLba - 1 - GPT_BACK_LBA)?.number} reaches the end of the disk; the backup GPT needs ${GPT_BACK_LBA} sectors behind the last partition`;
    resize = { fromBytes: size, toBytes: newTotal * SECTOR, why };
  }

  // New GUIDs, chosen now so the plan can name the PARTUUIDs the new grub.cfg uses.
  const partitionGuids: Record<string, string> = {};
  for (const p of table.partitions) partitionGuids[String(p.number)] = randomUUID().toUpperCase();
  if (esp.action === "create") partitionGuids[String(esp.partition)] = randomUUID().toUpperCase();
  const gpt = { diskGuid: randomUUID().toUpperCase(), partitionGuids };

  const { cmdline: newCmdline, rewritten } = rewriteCmdline(entry.entry.cmdline, table.id, partitionGuids);
  for (const r of rewritten)
    warnings.push(`the command line used the MBR PARTUUID; the new grub.cfg has ${r}. Other references to PARTUUID=${table.id}-NN in the guest (/etc/fstab, crypttab) must be changed to the new GUIDs inside the guest`);
  for (const tok of newCmdline.split(/\s+/)) {
    const m = /^(root|resume)=\/dev\/(hd|sd|vd)([a-z])(\d*)$/.exec(tok);
    if (m && (m[2] !== "sd" || m[3] !== "a"))
      warnings.push(`${tok} names a device by its kernel name; on Generation 2 the boot disk is SCSI 0:0 (/dev/sda), so use root=UUID=... in the guest if it does not boot`);
  }
  if (/(^|\s)root=/.test(newCmdline))
    warnings.push("the root file system is on a disk: on Generation 2 that disk is on virtio-SCSI, so the guest's initramfs must load virtio_scsi (Debian's default MODULES=most does; check with `lsinitramfs /boot/initrd.img-$(uname -r) | grep virtio_scsi` in the guest)");
  if (!/(^|\s)root=/.test(newCmdline) && initrd.length === 0) warnings.push("the command line has no root= and there is no initrd: the kernel will not find a root file system");

  // Secure Boot: shim's signer picks the template; shim starts only kernels its vendor CA signed.
  const shimTemplate = templateForLoader(shimBytes);
  const vendor = shimVendorCertificate(shimBytes);
  if (!shimTemplate.template) throw new Error(`${chain.shim} is not signed by a Microsoft CA vmhost knows (signer: ${shimTemplate.signer ?? "none"})`);
  if (!vendor || !authenticodeSignatures(grubBytes).some((s) => signedBy(s, vendor)))
    throw new Error(`${chain.grub} is not signed by the CA built into ${chain.shim}; the boot chain is inconsistent`);
  const vendorName = commonName(vendor.subject);
  const kernelSigs = authenticodeSignatures(kernelBytes);
  const kernelSigner = kernelSigs[0]?.signer ? commonName(kernelSigs[0].signer.subject) : undefined;
  const kernelTrusted = kh.efiStub && kernelSigs.some((s) => signedBy(s, vendor));
  const secureBoot: ConversionPlan["secureBoot"] = kernelTrusted
    ? {
        enabled: true,
        template: shimTemplate.template,
        why: `Debian's shim is signed by ${shimTemplate.issuer} (the ${shimTemplate.template} template trusts it), GRUB and the kernel ${entry.entry.kernel} by ${vendorName}, the CA built into shim`,
      }
    : {
        enabled: false,
        template: shimTemplate.template,
        why:
          `the kernel ${entry.entry.kernel} is ${!kh.efiStub ? "not a PE/COFF image (no EFI stub), so it carries no signature" : kernelSigner ? `signed by ${kernelSigner}, not by ${vendorName}` : "not signed"}` +
          `; Debian's shim starts only kernels ${vendorName} signed, so Secure Boot starts off. To turn it on, install the distribution's own signed shim and kernel in the guest, then \`vmhost firmware set NAME --secure-boot on --secure-boot-template ${shimTemplate.template}\``,
      };
  if (!secureBoot.enabled) warnings.push(`Secure Boot will be off: ${secureBoot.why}`);
  if (!kh.efiStub) warnings.push(`${entry.entry.kernel} has no EFI stub; Debian's GRUB boots it through the Linux boot protocol, which works only with Secure Boot off`);

  const boot: BootPlan = {
    loader: entry.loader,
    config: { partition: entry.at.part.number, path: entry.path },
    ...(entry.entry.label !== undefined ? { label: entry.entry.label } : {}),
    kernel: {
      partition: kernelAt.part.number,
      path: entry.entry.kernel,
      bytes: kernelBytes.length,
      ...(kh.version !== undefined ? { version: kh.version } : {}),
      efiStub: kh.efiStub,
      ...(kernelSigner !== undefined ? { signer: kernelSigner } : {}),
    },
    initrd,
    cmdline: entry.entry.cmdline,
    newCmdline,
    kernelFs: { partition: kernelAt.part.number, type: kernelAt.part.fs!.type, ...(kernelAt.part.fs!.uuid ? { uuid: kernelAt.part.fs!.uuid } : {}) },
  };
  const grubCfg = convertedGrubCfg(boot, esp.partition);
  const efiFiles = [
    { path: EFI_REMOVABLE, source: "shim-signed: shimx64.efi.signed" },
    { path: "\\EFI\\BOOT\\grubx64.efi", source: "grub-efi-amd64-signed: grubx64.efi.signed" },
    { path: "\\EFI\\BOOT\\mmx64.efi", source: "shim-helpers-amd64-signed: mmx64.efi.signed" },
    { path: "\\EFI\\BOOT\\grub.cfg", source: "written by vmhost (below)" },
  ];

  const steps: string[] = [`copy ${source.path} (${source.format}) to a raw temporary file; the source is only read`];
  if (resize) steps.push(`grow the copy from ${mib(resize.fromBytes)} to ${mib(resize.toBytes)}: ${resize.why}`);
  steps.push(`convert the MBR (disk signature ${table.id}) to GPT (sgdisk --mbrtogpt): every partition keeps its number and sectors; disk GUID ${gpt.diskGuid}`);
  if (esp.action === "repurpose")
    steps.push(`re-type partition ${esp.partition} (${esp.fsVersion}${entry.at.part.fs?.label ? ` "${entry.at.part.fs.label}"` : ""}, ${mib(esp.freeBytes)} free) as the EFI System Partition (EF00); its files stay`);
  else if (esp.action === "create") steps.push(`create partition ${esp.partition} as a ${mib(esp.sizeLba * SECTOR)} FAT32 EFI System Partition (EF00) at sector ${esp.startLba}`);
  steps.push(
    `install Debian's signed shim as ${EFI_REMOVABLE} with GRUB (grubx64.efi), MokManager (mmx64.efi) and a grub.cfg that boots ${boot.kernel.path}` +
      (initrd.length ? ` with ${initrd.map((i) => i.path).join(", ")}` : "") +
      ` from partition ${boot.kernel.partition}, command line "${newCmdline}"`,
  );
  steps.push(`write the result as the destination image; it appears under its name only when complete`);

  if (scanned.some((s) => s.part.fs?.type === "ntfs")) warnings.push("an NTFS partition is on this disk; it is kept as it is");
  if (grubInMbr) warnings.push("GRUB's BIOS core image in the sectors after the MBR is overwritten by the GPT; the Gen1 source keeps it");
  return {
    convertible: true,
    plan: {
      source: { ...source, virtualSize: size },
      table: tableFacts,
      gpt,
      ...(resize ? { resize } : {}),
      esp,
      loader: { kind: "debian-shim", boot, efiFiles, grubCfg },
      secureBoot,
      steps,
      warnings,
    },
  };
}

/** A disk that is GPT already (Windows after MBR2GPT, or a UEFI install): taken as it is when its ESP holds a loader. */
async function inspectGpt(
  source: { path: string; format: ImageFormat },
  size: number,
  table: ConversionPlan["table"],
  scanned: Scanned[],
  refuse: (code: RefusalCode, reason: string, fix: string) => void,
  refusals: Refusal[],
  warnings: string[],
): Promise<Inspection> {
  const esps = scanned.filter((s) => s.part.type === ESP_TYPE_GUID && s.reader?.kind === "vfat");
  for (const s of esps) {
    for (const path of ["/EFI/Microsoft/Boot/bootmgfw.efi", "/EFI/BOOT/BOOTX64.EFI"]) {
      const bytes = await s.reader!.read(path);
      if (!bytes) continue;
      const t = templateForLoader(bytes);
      const efiPath = path.replace(/\//g, "\\");
      const secureBoot: ConversionPlan["secureBoot"] = t.template
        ? { enabled: true, template: t.template, why: `${efiPath} is signed by ${t.signer ?? "?"}, issued by ${t.issuer}, which the ${t.template} template trusts` }
        : { enabled: false, template: "MicrosoftUEFICertificateAuthority", why: `${efiPath} is ${t.signer ? `signed by ${t.signer} (issued by ${t.issuer ?? "?"}), which no Hyper-V template trusts` : "not signed"}` };
      if (path.includes("Microsoft") && !(await s.reader!.read("/EFI/BOOT/BOOTX64.EFI")))
        warnings.push("the ESP has no \\EFI\\BOOT\\BOOTX64.EFI: the new VM's NVRAM needs a boot entry for \\EFI\\Microsoft\\Boot\\bootmgfw.efi (Windows makes one itself when it boots from a UEFI DVD or after bcdboot)");
      return {
        convertible: true,
        plan: {
          source: { ...source, virtualSize: size },
          table,
          esp: { action: "existing", partition: s.part.number },
          loader: { kind: "existing", path: efiPath, ...(t.signer ? { signer: t.signer } : {}) },
          secureBoot,
          steps: [
            `the disk is GPT already with an EFI System Partition (partition ${s.part.number}) holding ${efiPath}: copy it unchanged to the destination format`,
          ],
          warnings,
        },
      };
    }
  }
  refuse(
    "gpt-without-uefi-loader",
    esps.length ? `the disk is GPT but its EFI System Partition has no \\EFI\\BOOT\\BOOTX64.EFI or \\EFI\\Microsoft\\Boot\\bootmgfw.efi` : "the disk is GPT but has no FAT EFI System Partition",
    "install a UEFI boot loader inside the guest (grub-install --target=x86_64-efi --removable; for Windows: bcdboot C:\\Windows /s S: /f UEFI)",
  );
  return { convertible: false, refusals, warnings };
}
