// Network-boot payloads made from the built-in appliance's kernel and initramfs, for a switch's
// boot directory (its TFTP root):
//   bootx64.efi  a unified kernel image (systemd's EFI stub + kernel + initramfs + command line),
//                the network boot program OVMF fetches over PXEv4 or PXEv6: one file, no second
//                stage that would have to speak IPv6 itself;
//   shimx64.efi  for Secure Boot: Debian's shim (signed for the UEFI CA), which fetches
//   grubx64.efi  Debian's signed netboot GRUB from the same server, which reads grub/grub.cfg
//                and loads the (signed) kernel and the initramfs over TFTP, IPv4 or IPv6 alike;
//   boot.ipxe    an iPXE script (Gen1: iPXE's e1000 ROM under SeaBIOS) that fetches vmlinuz and
//                initrd.img over TFTP from the server that gave it the script.
// The initramfs gets one more archive appended whose /etc/profile prints a marker, so the
// console shows that the payload itself (not a disk) is running.
import { chmod, copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { ensureAppliance } from "./appliance/index.js";
import { extractDeb, fetchDebs } from "./appliance/apt.js";
import { gzipInitramfs, writeNewc } from "./appliance/cpio.js";
import { ETC_FILES } from "./appliance/guest-files.js";
import { run } from "./appliance/run.js";

export const UEFI_STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
export const NETBOOT_FILES = {
  uefi: "bootx64.efi",
  shim: "shimx64.efi",
  grub: "grubx64.efi",
  grubCfg: "grub/grub.cfg",
  ipxe: "boot.ipxe",
  kernel: "vmlinuz",
  initrd: "initrd.img",
} as const;
export const MARKER_PREFIX = "vmhost-netboot: payload";

export interface NetbootPayload {
  dir: string;
  marker: string;
  files: string[];
  /** The line the payload prints on its console once it runs, up to the protocol word. */
  markerLine: string;
}

/** The line printed by the payload's shell profile: "vmhost-netboot: payload MARKER running (via uefi|ipxe)". */
export function markerProfile(marker: string): string {
  return (
    `echo "${MARKER_PREFIX} ${marker} running (via $(sed -n 's/.*vmhost.netboot=\\([^ ]*\\).*/\\1/p' /proc/cmdline))"\n` +
    (ETC_FILES["etc/profile"] ?? "")
  );
}

export function ipxeScript(cmdline: string): string {
  return [
    "#!ipxe",
    "echo vmhost-netboot: iPXE script running",
    `kernel tftp://\${next-server}/${NETBOOT_FILES.kernel} ${cmdline} vmhost.netboot=ipxe`,
    `initrd tftp://\${next-server}/${NETBOOT_FILES.initrd}`,
    "boot",
    "",
  ].join("\n");
}

/** Debian's netboot GRUB reads $prefix/grub.cfg, its prefix being /grub on the TFTP server. */
export function grubNetCfg(cmdline: string): string {
  return [
    "set timeout=0",
    'echo "vmhost-netboot: signed GRUB is loading the kernel over TFTP"',
    `linux /${NETBOOT_FILES.kernel} ${cmdline} vmhost.netboot=uefi-secure-boot`,
    `initrd /${NETBOOT_FILES.initrd}`,
    "boot",
    "",
  ].join("\n");
}

export async function buildNetbootPayload(dirIn: string, opts: { marker?: string; log?: (l: string) => void } = {}): Promise<NetbootPayload> {
  const marker = opts.marker ?? "appliance";
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(marker)) throw new Error(`payload marker "${marker}" may use letters, digits, '.', '_' and '-' only`);
  const dir = resolve(dirIn);
  const app = await ensureAppliance({ log: opts.log });
  const kernel = join(app.dir, app.manifest.vmlinuz);
  const baseInitrd = await readFile(join(app.dir, app.manifest.initrd));
  const extra = gzipInitramfs(
    writeNewc([
      { type: "dir", path: "etc", mode: 0o755 },
      { type: "file", path: "etc/profile", mode: 0o644, data: Buffer.from(markerProfile(marker)) },
    ]),
  );
  const cmdline = app.manifest.cmdline;

  // dnsmasq serves TFTP as an unprivileged user and only world-readable files.
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o755);
  const work = await mkdtemp(join(tmpdir(), "vmhost-netboot-"));
  try {
    const initrd = join(work, NETBOOT_FILES.initrd);
    await writeFile(initrd, Buffer.concat([baseInitrd, extra]));
    const cmdFile = join(work, "cmdline.txt");
    await writeFile(cmdFile, `${cmdline} vmhost.netboot=uefi`);
    const osrel = join(work, "os-release");
    await writeFile(osrel, `NAME="vmhost netboot payload"\nID=vmhost-netboot\nVERSION_ID="${app.manifest.id}"\n`);
    const uki = join(work, NETBOOT_FILES.uefi);
    // Section addresses as systemd 252's ukify would place them: the stub finds them by name.
    await run("objcopy", [
      "--add-section", `.osrel=${osrel}`, "--change-section-vma", ".osrel=0x20000",
      "--add-section", `.cmdline=${cmdFile}`, "--change-section-vma", ".cmdline=0x30000",
      "--add-section", `.linux=${kernel}`, "--change-section-vma", ".linux=0x2000000",
      "--add-section", `.initrd=${initrd}`, "--change-section-vma", ".initrd=0x3000000",
      UEFI_STUB, uki,
    ]);
    await writeFile(join(work, NETBOOT_FILES.ipxe), ipxeScript(cmdline));
    // The signed chain from the very packages the appliance's Gen2 disk boots with (in its cache).
    const debs = await fetchDebs(
      join(dirname(app.dir), "debs"),
      { "shim-signed": app.manifest.packages["shim-signed"]!, "grub-efi-amd64-signed": app.manifest.packages["grub-efi-amd64-signed"]! },
      opts.log ?? (() => undefined),
    );
    const x = join(work, "x");
    for (const deb of Object.values(debs)) await extractDeb(deb, x);
    await copyFile(join(x, "usr/lib/shim/shimx64.efi.signed"), join(work, NETBOOT_FILES.shim));
    await copyFile(join(x, "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"), join(work, NETBOOT_FILES.grub));
    await mkdir(join(work, "grub"));
    await writeFile(join(work, NETBOOT_FILES.grubCfg), grubNetCfg(cmdline));
    await mkdir(join(dir, "grub"), { recursive: true });
    await chmod(join(dir, "grub"), 0o755);
    await copyFile(kernel, join(work, NETBOOT_FILES.kernel));
    const files: string[] = [];
    for (const f of Object.values(NETBOOT_FILES)) {
      const target = join(dir, f);
      // Swapped in by rename, so a VM fetching the old file meanwhile never reads a torn one.
      const tmp = `${target}.${process.pid}.tmp`;
      await copyFile(join(work, f), tmp);
      await chmod(tmp, 0o644);
      await rename(tmp, target);
      files.push(target);
    }
    return { dir, marker, files, markerLine: `${MARKER_PREFIX} ${marker} running` };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
