import type { CatalogueInput } from "./types.js";

/**
 * The catalogue of known boot failures: plain data, checked by the schema in types.ts when it
 * loads. To add a failure:
 *   1. capture a real console where it happens (test/fixtures/consoles/make-fixtures.ts, or a
 *      transcription marked as such in that folder's README.md);
 *   2. add a signature: `pattern` is tested against every console line (terminal escapes
 *      removed), the highest `priority` of a boot wins, `fix` items are chosen by the VM's
 *      settings (`when`);
 *   3. map the fixture to the id in test/unit/diagnostics.test.ts (every id needs one).
 * Placeholders in title, explanation and fix: {name} {generation} {cpus} {memoryMiB} {template}
 * {secureBoot} {disk} {tried} {quiet} {lastLine}, and {$1}… for the pattern's groups.
 */
const TRIED_UEFI = {
  pattern: String.raw`BdsDxe: failed to (?:load|start) (Boot[0-9A-F]{4}) "([^"]*?)\s*" .*: ([A-Za-z][A-Za-z ]*)$`,
  format: '{$1} "{$2}": {$3}',
};

const ATTACH_SOMETHING = {
  when: { hasDisk: false, hasDvd: false },
  text: "This VM has no hard disk and no DVD: attach a disk with an operating system (vmhost disk add {name} --path DISK) or an installation ISO (vmhost dvd set {name} ISO).",
};

export const CATALOGUE_DATA: CatalogueInput = {
  signatures: [
    {
      id: "illumos-microfind-no-pit",
      pattern: "microfind: could not calibrate delay loop",
      title: "illumos could not calibrate its delay loop: no usable PIT",
      explanation:
        "illumos (OmniOS, OpenIndiana, SmartOS) measures an early delay loop against the Intel 8254 PIT (microfind) and panics when it gets no usable PIT readings.",
      fix: [
        {
          when: { generation: 2 },
          text: "Generation 2 VMs have no PIT (as on Hyper-V): create this guest as a Generation 1 VM instead, with the same disk or installation ISO (vmhost new {name}-gen1 --generation 1 --disk DISK, or --dvd ISO).",
        },
        { when: { generation: 1 }, text: "This Generation 1 VM has a PIT, so its readings were unusable: a heavily loaded host can cause that." },
        { when: { cpusAtMost: 1 }, text: "OmniOS also needs two or more virtual processors to boot (illumos-omnios issue 459): vmhost set {name} --cpus 2." },
      ],
      priority: 90,
    },
    {
      id: "no-usable-timer",
      pattern: String.raw`IO-APIC \+ timer doesn't work`,
      title: "The guest kernel found no working timer (IO-APIC + timer doesn't work)",
      explanation:
        "At boot Linux routes the timer interrupt through the IO-APIC and checks that it ticks. With neither a PIT nor an HPET it finds no timer that works, and panics.",
      fix: [
        {
          when: { generation: 2 },
          text: "Generation 2 VMs have no PIT (as on Hyper-V), so the kernel must use the HPET, which vmhost keeps on Generation 2: check that the kernel command line has no hpet=disable and the kernel has HPET support, or boot it with no_timer_check, or use a Generation 1 VM (it has a PIT).",
        },
        { when: { generation: 1 }, text: "Boot the kernel with no_timer_check (or noapic); apic=debug shows why the timer check failed." },
      ],
      priority: 85,
      context: 3,
    },
    {
      id: "secure-boot-refused",
      // The built-in shell is always refused under Secure Boot; that alone is not the failure.
      pattern: String.raw`BdsDxe: failed to (?:load|start) (Boot[0-9A-F]{4}) "(?!EFI Internal Shell")([^"]*?)\s*" .*: (Access Denied|Security Violation)$`,
      title: 'Secure Boot refused to start {$1} "{$2}" ({$3})',
      explanation:
        "With Secure Boot on, UEFI starts only loaders signed by a key in the VM's signature database (db) and not revoked (dbx); this loader's signature is not trusted.",
      fix: [
        {
          when: { secureBoot: true, template: ["MicrosoftWindows"] },
          text: "Secure Boot is on with the MicrosoftWindows template, which trusts only Windows boot loaders: a Linux or other non-Windows guest needs the MicrosoftUEFICertificateAuthority template (it trusts shim, signed by the Microsoft UEFI CA), or Secure Boot off.",
        },
        {
          when: { secureBoot: true, template: ["MicrosoftUEFICertificateAuthority"] },
          text: "Secure Boot is on with the MicrosoftUEFICertificateAuthority template, which trusts loaders signed by the Microsoft UEFI CA (such as a distribution's shim): boot through a signed shim, or turn Secure Boot off for this VM.",
        },
        {
          when: { secureBoot: true, template: ["OpenSourceShieldedVM"] },
          text: "Secure Boot is on with the OpenSourceShieldedVM template: boot a loader signed by a key that template trusts, or turn Secure Boot off for this VM.",
        },
        {
          when: { secureBoot: false },
          text: "This VM's settings say Secure Boot is off ({template} template), yet its firmware enforced it: its UEFI variable store (nvram.fd) was made with Secure Boot enabled. Boot a signed loader, or give the VM a variable store without Secure Boot.",
        },
        { when: { tried: "some" }, text: "Refused or failed: {tried}." },
      ],
      priority: 95,
      collect: TRIED_UEFI,
    },
    {
      id: "uefi-no-bootable-device",
      pattern: "BdsDxe: No bootable option or device was found",
      title: "UEFI found no bootable option or device",
      explanation: "The UEFI boot manager tried every entry in BootOrder and none of them started an operating system.",
      fix: [
        { when: { tried: "some" }, text: "Tried: {tried}." },
        ATTACH_SOMETHING,
        {
          when: { hasDisk: true },
          text: "Nothing on the attached disk could be started: a Generation 2 VM boots from a GPT disk with an EFI System Partition holding \\EFI\\BOOT\\BOOTX64.EFI (or a boot entry for the installed loader); a disk made for BIOS (MBR, no EFI System Partition) boots only in a Generation 1 VM.",
        },
        { when: { secureBoot: true }, text: "Secure Boot is on ({template} template), so the firmware's built-in shell may not start either." },
      ],
      priority: 60,
      collect: TRIED_UEFI,
    },
    {
      id: "uefi-shell-fallback",
      pattern: String.raw`^UEFI Interactive Shell v\d`,
      title: "No operating system was loaded: UEFI fell back to its built-in shell",
      explanation:
        "The UEFI boot manager found nothing it could start before the EFI Internal Shell, the last entry in BootOrder, so it started the shell (a Shell> prompt).",
      fix: [
        { when: { tried: "some" }, text: "Tried: {tried}." },
        { when: { tried: "none", hasNic: false }, text: "There was nothing to try before the shell." },
        ATTACH_SOMETHING,
        {
          when: { hasDisk: true },
          text: "Nothing on the attached disk could be started: a Generation 2 VM boots from a GPT disk with an EFI System Partition holding \\EFI\\BOOT\\BOOTX64.EFI (or a boot entry for the installed loader); a disk made for BIOS (MBR, no EFI System Partition) boots only in a Generation 1 VM.",
        },
      ],
      priority: 60,
      collect: TRIED_UEFI,
    },
    {
      id: "uefi-network-boot-no-disk",
      pattern: String.raw`>>Start (?:PXE|HTTP Boot) over IPv[46]`,
      title: "No boot disk: UEFI is trying network boot",
      explanation:
        "This VM has no hard disk and no DVD, so UEFI tries its network adapters (PXE, then HTTP boot, over IPv4 and IPv6). With no boot server on the switch each attempt times out (about four minutes in all on the Default Switch), then UEFI falls back to its shell.",
      fix: [
        {
          text: "Attach a disk with an operating system (vmhost disk add {name} --path DISK) or an installation ISO (vmhost dvd set {name} ISO). To boot from the network on purpose, serve a boot file on the adapter's switch.",
        },
      ],
      priority: 20,
      appliesTo: { generation: 2, hasDisk: false, hasDvd: false },
      withdrawnBy: String.raw`BdsDxe: starting Boot[0-9A-F]{4} "UEFI (?:PXEv|HTTPv)`,
    },
    {
      id: "bios-no-bootable-device",
      pattern: String.raw`^No bootable device\.?$`,
      title: "BIOS found no bootable device",
      explanation: "SeaBIOS tried each device in the VM's startup order and none held a boot sector it could start.",
      fix: [
        { when: { tried: "some" }, text: "Tried: {tried}." },
        ATTACH_SOMETHING,
        {
          when: { hasDisk: true },
          text: "The disk has no BIOS boot sector: it is blank, or it was made for UEFI (a GPT disk with an EFI System Partition boots only in a Generation 2 VM), or its operating system was installed without a BIOS boot loader.",
        },
      ],
      priority: 60,
      collect: { pattern: "^Boot failed: (.+)$", format: "{prev}: {$1}" },
      context: 6,
    },
    {
      id: "linux-no-root-fs",
      pattern: "VFS: Unable to mount root fs",
      title: "The Linux kernel could not mount its root file system",
      explanation:
        "The kernel found no root device it could mount: the root= device does not exist (a wrong name, or its storage driver is neither in the kernel nor in the initramfs), or no initramfs was loaded.",
      fix: [
        { text: "Check root= on the kernel command line and that an initramfs is loaded; unknown-block(0,0) in the message means no such device was found." },
        { when: { generation: 2 }, text: "A Generation 2 VM's disks are on a SCSI controller (virtio-scsi): the kernel or initramfs needs virtio_scsi and sd_mod, and the disk is /dev/sdX." },
        { when: { generation: 1 }, text: "A Generation 1 VM boots from IDE: the kernel or initramfs needs ata_piix (and sd_mod), and the first disk is /dev/sda." },
      ],
      priority: 85,
      context: 4,
    },
    {
      id: "linux-init-exited",
      pattern: "Kernel panic - not syncing: Attempted to kill init!",
      title: "The guest's init process ended (Attempted to kill init!)",
      explanation:
        "Linux panics when process 1 ends: the init program (init= or rdinit= on the kernel command line, else /sbin/init or the initramfs's /init) failed to start or exited.",
      fix: [
        { text: "The lines before the panic show init's own error. Check init= and rdinit= on the kernel command line, and that the root file system or initramfs has a working /sbin/init (or /init)." },
      ],
      priority: 70,
      context: 4,
    },
    {
      id: "kernel-panic",
      pattern: String.raw`Kernel panic - not syncing: (.*)|^panic\[cpu\d+\]/thread=[0-9a-f]+: (.*)`,
      title: "The guest kernel panicked: {$1}{$2}",
      explanation: "The guest's kernel hit an error it cannot continue from and stopped.",
      fix: [
        {
          text: "The lines before the panic (vmhost console {name} --log) show what failed. Common causes in a VM: a kernel without drivers for the VM's devices (this is a Generation {generation} VM), too little memory ({memoryMiB} MiB), or a damaged disk.",
        },
      ],
      priority: 40,
      context: 5,
    },
  ],
  stalls: [
    {
      id: "illumos-configuring-devices-stall",
      lastLine: String.raw`^Configuring devices\.?$`,
      seenBefore: String.raw`SunOS Release \d`,
      title: "boot stalled after: {lastLine}",
      explanation:
        "illumos (OmniOS) stops here silently when it has a single virtual processor (illumos-omnios issue 459). No new console output for {quiet} s.",
      fix: [
        { when: { cpusAtMost: 1 }, text: "Give the VM two or more virtual processors: turn it off, then vmhost set {name} --cpus 2." },
        { when: { cpusAtLeast: 2 }, text: "The VM already has {cpus} virtual processors: boot illumos verbosely (boot -v at its loader) to see where it stops." },
      ],
    },
    {
      id: "boot-stalled-after-loader",
      lastLine: String.raw`BdsDxe: starting Boot[0-9A-F]{4} "`,
      title: "boot stalled after: {lastLine}",
      explanation: "UEFI started the boot loader and nothing has been printed on the serial console since ({quiet} s).",
      fix: [
        {
          text: "A guest that does not use the serial console (Linux without console=ttyS0, Windows) prints nothing here even while it runs; otherwise the loader or the kernel hung early. vmhost console {name} shows the console live.",
        },
      ],
    },
    {
      id: "boot-stalled",
      title: "boot stalled after: {lastLine}",
      explanation: "The guest printed nothing new on its serial console for {quiet} s and has not reached a login or shell prompt.",
      fix: [
        { text: "vmhost console {name} --log shows what it printed; the guest may be waiting for input (vmhost console {name}) or hanging in a driver at that point." },
        { when: { cpusAtMost: 1 }, text: "Some guests hang silently with a single virtual processor (OmniOS does): try vmhost set {name} --cpus 2." },
      ],
    },
  ],
  knownGood: [
    { pattern: "vmhost-appliance: ready", what: "the appliance's ready line" },
    { pattern: String.raw`\blogin: ?$`, what: "a login prompt" },
    { pattern: String.raw`^[\w@.:~/()\[\] -]*[#$] ?$`, what: "a shell prompt" },
    { pattern: String.raw`Reached target .*(?:Multi-User|Graphical)`, what: "systemd's multi-user target" },
  ],
};
