// Text files of the appliance guest (init, helper scripts, /etc) and of its boot loaders.
// Pure functions of their parameters, so their content can be hashed into the appliance id.

export const KERNEL_CMDLINE = "console=ttyS0,115200 quiet";
export const READY_LINE = "vmhost-appliance: ready";
export const QGA_PORT_NAME = "org.qemu.guest_agent.0";

/** Where /init reads the modules to load, one path (relative to /lib/modules/<release>) per line. */
export const MODULES_LOAD_FILE = "etc/vmhost/modules.load";

export interface InitParams {
  kernelRelease: string;
}

export function initScript(p: InitParams): string {
  return `#!/bin/sh
# vmhost appliance /init (PID 1): a busybox initramfs that stays the root filesystem.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
umask 022

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run

# Drivers, listed in dependency order by the builder (modules.dep has the same graph for modprobe).
while read -r m; do
  [ -n "$m" ] || continue
  case "$m" in */efivarfs.ko) [ -d /sys/firmware/efi ] || continue ;; esac
  insmod "/lib/modules/${p.kernelRelease}/$m" || echo "vmhost-appliance: could not load $m"
done < /${MODULES_LOAD_FILE}

hostname appliance

if [ -d /sys/firmware/efi ]; then
  mount -t efivarfs -o nosuid,nodev,noexec efivarfs /sys/firmware/efi/efivars
  echo "vmhost-appliance: booted via UEFI"
  # 4 attribute bytes, then the value; efivarfs files cannot seek, so read the whole variable.
  set -- $(od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c 2>/dev/null)
  if [ "\${5:-0}" = 1 ]; then echo "vmhost-appliance: secure boot enabled"; else echo "vmhost-appliance: secure boot disabled"; fi
else
  echo "vmhost-appliance: booted via BIOS"
fi

# ACPI power button (QMP system_powerdown): busybox acpid reads the button's evdev node, which
# it only looks for at startup, so give the driver a moment to create it.
i=0
while [ ! -e /dev/input/event0 ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid

ip link set lo up
for dev in /sys/class/net/eth*; do
  [ -e "$dev" ] || continue
  n=\${dev##*/}
  ip link set "$n" up
  udhcpc -f -i "$n" -s /etc/udhcpc/default.script -x hostname:appliance </dev/null >"/run/udhcpc.$n.log" 2>&1 &
done

# QEMU guest agent on its virtio-serial port, found by name (there is no udev). Ports appear
# shortly after virtio_console binds, so wait a little, but only when a virtio console exists.
qga_port=
if grep -qx 0x0003 /sys/bus/virtio/devices/*/device 2>/dev/null; then
  i=0
  while [ -z "$qga_port" ] && [ $i -lt 30 ]; do
    for f in /sys/class/virtio-ports/*/name; do
      [ -r "$f" ] && [ "$(cat "$f")" = ${QGA_PORT_NAME} ] || continue
      d=\${f%/name}
      [ -c "/dev/\${d##*/}" ] && qga_port="/dev/\${d##*/}"
    done
    [ -n "$qga_port" ] || { sleep 0.1; i=$((i + 1)); }
  done
fi
if [ -n "$qga_port" ]; then
  mkdir -p /run/qemu-ga
  (while :; do qemu-ga -m virtio-serial -p "$qga_port" -t /run/qemu-ga -l /run/qemu-ga.log -F/etc/qemu/fsfreeze-hook; sleep 1; done) </dev/null >/dev/null 2>&1 &
fi

echo "${READY_LINE}"

# A shell on the console, for a person or a test typing on the serial port.
while :; do
  setsid cttyhack sh -l
done
`;
}

/**
 * qemu-ga's guest-shutdown runs "shutdown -h -P +0 <msg>" (powerdown), "-h -H +0" (halt) or
 * "-r +0" (reboot). There is no init daemon to ask, so act directly.
 */
export function shutdownScript(): string {
  return `#!/bin/sh
action=poweroff
for a in "$@"; do
  case "$a" in
    -r) action=reboot ;;
    -H) action=halt ;;
  esac
done
echo "vmhost-appliance: shutdown $* -> $action" >/dev/console
sync
exec /bin/busybox "$action" -f
`;
}

/**
 * qemu-ga's fsfreeze hook (`-F`, qemu-ga(8)): run with "freeze" before the file systems are
 * frozen and "thaw" after they are thawed, so the guest's own log (its console) shows both, as a
 * VSS writer's log does on Windows.
 */
export function fsfreezeHookScript(): string {
  return `#!/bin/sh
echo "vmhost-appliance: fsfreeze-hook $1" >/dev/console
exit 0
`;
}

/** poweroff/reboot/halt without -f would signal PID 1, which is a shell here: always force. */
export function forcedPowerScript(action: "poweroff" | "reboot" | "halt"): string {
  return `#!/bin/sh
sync
exec /bin/busybox ${action} -f
`;
}

/** busybox acpid runs /etc/acpi/<event>/<code> for the power button ("PWRF 00000080"). */
export function powerButtonScript(): string {
  return `#!/bin/sh
echo "vmhost-appliance: power button pressed, powering off" >/dev/console
sync
exec /bin/busybox poweroff -f
`;
}

/** busybox udhcpc calls this with $1 = deconfig | bound | renew | leasefail | nak. */
export function udhcpcScript(): string {
  return `#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    if [ "$1" = bound ]; then ip -4 addr flush dev "$interface"; fi
    ip -4 addr replace "$ip/\${mask:-24}" \${broadcast:+broadcast "$broadcast"} dev "$interface"
    if [ -n "$router" ]; then
      while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
      for r in $router; do
        ip -4 route add default via "$r" dev "$interface" && break
      done
    fi
    if [ -n "$dns" ]; then
      : >/etc/resolv.conf
      [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
      for s in $dns; do echo "nameserver $s" >>/etc/resolv.conf; done
    fi
    ;;
esac
exit 0
`;
}

const DEBIAN_CODENAMES: Record<string, string> = { "11": "bullseye", "12": "bookworm", "13": "trixie" };

export function osRelease(p: { debianVersion: string; kernelRelease: string }): string {
  const major = p.debianVersion.split(".")[0] ?? p.debianVersion;
  const codename = DEBIAN_CODENAMES[major];
  const debian = codename ? `Debian ${p.debianVersion} ${codename}` : `Debian ${p.debianVersion}`;
  return [
    `PRETTY_NAME="vmhost appliance ${p.debianVersion} (${debian})"`,
    `NAME="vmhost appliance"`,
    `VERSION_ID="${p.debianVersion}"`,
    `VERSION="${p.debianVersion} (${debian}, kernel ${p.kernelRelease})"`,
    ...(codename ? [`VERSION_CODENAME=${codename}`] : []),
    `ID=vmhost-appliance`,
    `ID_LIKE=debian`,
    `VARIANT="busybox initramfs"`,
    `VARIANT_ID=initramfs`,
    "",
  ].join("\n");
}

export const ETC_FILES: Readonly<Record<string, string>> = {
  "etc/hostname": "appliance\n",
  "etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tappliance\n::1\tlocalhost ip6-localhost ip6-loopback\n",
  "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
  "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
  "etc/profile": "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport HOME=/root\nexport PS1='appliance:\\w# '\ncd /root 2>/dev/null\n",
  "etc/resolv.conf": "",
  "etc/fstab": "",
};

export function syslinuxCfg(cmdline: string): string {
  return [
    "SERIAL 0 115200",
    "PROMPT 0",
    "TIMEOUT 1",
    "DEFAULT vmhost",
    "LABEL vmhost",
    "  LINUX /vmlinuz",
    "  INITRD /initrd.img",
    `  APPEND ${cmdline}`,
    "",
  ].join("\n");
}

/**
 * Debian's signed GRUB has /EFI/debian as its built-in prefix (on the device it was loaded
 * from) and sources $prefix/x86_64-efi/grub.cfg, else $prefix/grub.cfg, else
 * $cmdpath/grub.cfg; $root is already the ESP, so the kernel paths need no search.
 */
export function grubCfg(cmdline: string): string {
  return [
    "set timeout=0",
    "set timeout_style=hidden",
    'echo "vmhost-appliance: GRUB is loading the kernel"',
    `linux /vmlinuz ${cmdline}`,
    "initrd /initrd.img",
    "boot",
    "",
  ].join("\n");
}

/** \EFI\debian\BOOTX64.CSV as Debian installs it (UTF-16LE with BOM), read by shim's fallback. */
export function bootCsv(): Buffer {
  return Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from("shimx64.efi,debian,,This is the boot entry for debian\n", "utf16le")]);
}
