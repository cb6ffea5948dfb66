// Boot loader configurations, command-line translation and PE/bzImage facts used by the
// Gen1 -> Gen2 conversion. The PE checks read the real signed files Debian ships (from the
// appliance's package cache) and the appliance's real kernel.
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureAppliance, type Appliance } from "../../src/images/appliance/index.js";
import { BootConfigError, grubenvSavedEntry, parseGrubConfig, parseSyslinuxConfig } from "../../src/images/generation/bootconfig.js";
import { debianSignedBootChain, type Gen2BootChain } from "../../src/images/generation/boot-chain.js";
import { authenticodeSignatures, commonName, kernelHeader, shimVendorCertificate, signedBy } from "../../src/images/generation/pe.js";
import { convertedGrubCfg, rewriteCmdline, templateForLoader } from "../../src/images/generation/plan.js";

describe("SYSLINUX/EXTLINUX configuration", () => {
  test("the appliance's syslinux.cfg: DEFAULT names a LABEL", () => {
    const e = parseSyslinuxConfig("SERIAL 0 115200\nPROMPT 0\nTIMEOUT 1\nDEFAULT vmhost\nLABEL vmhost\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND console=ttyS0,115200 quiet\n", "/");
    assert.deepEqual(e, { label: "vmhost", kernel: "/vmlinuz", initrd: ["/initrd.img"], cmdline: "console=ttyS0,115200 quiet", root: { kind: "same" }, notes: [] });
  });

  test("initrd= in APPEND moves to the initrd list; relative paths resolve against the config's directory", () => {
    const e = parseSyslinuxConfig("default linux\nlabel linux\n kernel ../vmlinuz-6.1\n append initrd=../initrd.img-6.1,extra.img root=UUID=abcd ro quiet\n", "/boot/extlinux");
    assert.equal(e.kernel, "/boot/vmlinuz-6.1");
    assert.deepEqual(e.initrd, ["/boot/initrd.img-6.1", "/boot/extlinux/extra.img"]);
    assert.equal(e.cmdline, "root=UUID=abcd ro quiet");
  });

  test("a menu module as DEFAULT boots MENU DEFAULT, else ONTIMEOUT, else the first LABEL; a global APPEND applies", () => {
    const menu = "UI menu.c32\nDEFAULT vesamenu.c32\nAPPEND root=/dev/sda1\nLABEL a\n KERNEL /a\nLABEL b\n MENU DEFAULT\n KERNEL /b\n APPEND -\n";
    const e = parseSyslinuxConfig(menu, "/");
    assert.equal(e.kernel, "/b");
    assert.equal(e.cmdline, "", "APPEND - means no options");
    assert.equal(parseSyslinuxConfig("DEFAULT menu.c32\nONTIMEOUT b\nAPPEND quiet\nLABEL a\n KERNEL /a\nLABEL b\n KERNEL /b\n", "/").kernel, "/b");
    const first = parseSyslinuxConfig("DEFAULT menu.c32\nAPPEND quiet\nLABEL a\n KERNEL /a\n", "/");
    assert.equal(first.kernel, "/a");
    assert.equal(first.cmdline, "quiet");
  });

  test("DEFAULT without such a label is a kernel with options (the old form)", () => {
    const e = parseSyslinuxConfig("DEFAULT vmlinuz initrd=initrd.gz root=/dev/sda2\n", "/");
    assert.equal(e.kernel, "/vmlinuz");
    assert.deepEqual(e.initrd, ["/initrd.gz"]);
    assert.equal(e.cmdline, "root=/dev/sda2");
  });

  test("a default entry that chain-loads or runs a COM32 module is refused with the label named", () => {
    assert.throws(() => parseSyslinuxConfig("DEFAULT win\nLABEL win\n COM32 chain.c32\n APPEND hd0 1\n", "/"), (e: unknown) => e instanceof BootConfigError && /LABEL win boots with COM32 chain\.c32/.test(e.message));
    assert.throws(() => parseSyslinuxConfig("DEFAULT hdt\nLABEL hdt\n KERNEL hdt.c32\n", "/"), /not a Linux kernel/);
    assert.throws(() => parseSyslinuxConfig("PROMPT 1\n", "/"), /no DEFAULT and no LABEL/);
  });
});

// As grub-mkconfig 2.06 writes it on Debian 12 (trimmed), with a separate /boot.
const DEBIAN_GRUB_CFG = `
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "\${next_entry}" ] ; then
   set default="\${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi
function load_video {
  if [ x$feature_all_video_module = xy ]; then
    insmod all_video
  fi
}
set timeout_style=menu
set timeout=5
set vt_handoff=vt.handoff=7
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class os $menuentry_id_option 'gnulinux-simple-0a4e5f8e-2c1a-4f0c-9d53-b7b2bd0c1e77' {
	load_video
	insmod gzio
	if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
	insmod part_msdos
	insmod ext2
	set root='hd0,msdos1'
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1 --hint-efi=hd0,msdos1 --hint-baremetal=ahci0,msdos1  5b0b7a3e-7c5a-4a9e-9a43-1fa2c1e6c2d1
	else
	  search --no-floppy --fs-uuid --set=root 5b0b7a3e-7c5a-4a9e-9a43-1fa2c1e6c2d1
	fi
	echo	'Loading Linux 6.1.0-57-amd64 ...'
	linux	/vmlinuz-6.1.0-57-amd64 root=UUID=0a4e5f8e-2c1a-4f0c-9d53-b7b2bd0c1e77 ro  quiet $vt_handoff $undefined_thing
	echo	'Loading initial ramdisk ...'
	initrd	/initrd.img-6.1.0-57-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-0a4e5f8e' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-57-amd64 (recovery mode)' --class debian $menuentry_id_option 'gnulinux-6.1.0-57-amd64-recovery-0a4e5f8e' {
		search --no-floppy --fs-uuid --set=root 5b0b7a3e-7c5a-4a9e-9a43-1fa2c1e6c2d1
		linux	/vmlinuz-6.1.0-57-amd64 root=UUID=0a4e5f8e-2c1a-4f0c-9d53-b7b2bd0c1e77 ro single
		initrd	/initrd.img-6.1.0-57-amd64
	}
}
menuentry 'Windows (on /dev/sdb1)' --class windows $menuentry_id_option 'osprober-chain-1234' {
	insmod part_msdos
	chainloader +1
}
`;

describe("GRUB configuration", () => {
  test("Debian's generated grub.cfg: the first entry, its search --fs-uuid, linux and initrd lines", () => {
    const e = parseGrubConfig(DEBIAN_GRUB_CFG);
    assert.equal(e.label, "Debian GNU/Linux");
    assert.equal(e.kernel, "/vmlinuz-6.1.0-57-amd64");
    assert.deepEqual(e.initrd, ["/initrd.img-6.1.0-57-amd64"]);
    assert.deepEqual(e.root, { kind: "fs-uuid", value: "5b0b7a3e-7c5a-4a9e-9a43-1fa2c1e6c2d1" });
    assert.equal(e.cmdline, "root=UUID=0a4e5f8e-2c1a-4f0c-9d53-b7b2bd0c1e77 ro quiet vt.handoff=7", "top-level set variables substituted, unset ones dropped");
    assert.ok(e.notes.some((n) => n.includes("$undefined_thing")), e.notes.join("; "));
  });

  test("default by submenu path, by id, by saved entry; a chainloader default is refused", () => {
    assert.match(parseGrubConfig(DEBIAN_GRUB_CFG.replace('set default="0"', 'set default="1>0"')).cmdline, / single$/);
    const byId = parseGrubConfig(DEBIAN_GRUB_CFG.replace('set default="0"', "set default=gnulinux-advanced-0a4e5f8e>gnulinux-6.1.0-57-amd64-recovery-0a4e5f8e"));
    assert.match(byId.label ?? "", /recovery/);
    // As in GRUB, an id names an entry of the current menu level only: a nested id alone falls back to the first entry.
    const nested = parseGrubConfig(DEBIAN_GRUB_CFG.replace('set default="0"', "set default=gnulinux-6.1.0-57-amd64-recovery-0a4e5f8e"));
    assert.equal(nested.label, "Debian GNU/Linux");
    assert.ok(nested.notes.some((n) => /not found; the first entry is used/.test(n)));
    const saved = DEBIAN_GRUB_CFG.replace('set default="0"', 'set default="${saved_entry}"');
    assert.equal(parseGrubConfig(saved, { savedEntry: "Debian GNU/Linux" }).label, "Debian GNU/Linux");
    assert.ok(parseGrubConfig(saved).notes.some((n) => /no saved entry/.test(n)));
    assert.throws(() => parseGrubConfig(DEBIAN_GRUB_CFG.replace('set default="0"', 'set default="2"')), /uses chainloader, not a Linux kernel/);
    assert.equal(grubenvSavedEntry("# GRUB Environment Block\nsaved_entry=gnulinux-simple-x\n####\n"), "gnulinux-simple-x");
  });

  test("set root=(hd0,msdos2) without search points at partition 2; a device prefix on paths is dropped", () => {
    const e = parseGrubConfig("menuentry 'x' {\n set root=(hd0,msdos2)\n linux (hd0,msdos2)/boot/vmlinuz root=/dev/sda2\n initrd /boot/initrd.img\n}\n");
    assert.deepEqual(e.root, { kind: "partition", disk: 0, partition: 2 });
    assert.equal(e.kernel, "/boot/vmlinuz");
  });
});

describe("command line and grub.cfg for the converted disk", () => {
  test("PARTUUIDs made from this disk's MBR signature become the new GPT PARTUUIDs; others stay", () => {
    const r = rewriteCmdline("root=PARTUUID=9a1b2dc1-02 resume=PARTUUID=9A1B2DC1-03 ro data=PARTUUID=deadbeef-01", "9a1b2dc1", { "2": "8EDD5434-95D1-4FEC-B775-97BB1A281980", "3": "11111111-2222-3333-4444-555555555555" });
    assert.equal(r.cmdline, "root=PARTUUID=8edd5434-95d1-4fec-b775-97bb1a281980 resume=PARTUUID=11111111-2222-3333-4444-555555555555 ro data=PARTUUID=deadbeef-01");
    assert.equal(r.rewritten.length, 2);
  });

  test("grub.cfg searches the kernel's file system unless it is the ESP GRUB starts on", () => {
    const base = {
      loader: "grub" as const,
      config: { partition: 1, path: "/grub/grub.cfg" },
      label: "Debian",
      kernel: { partition: 1, path: "/vmlinuz-6.1", bytes: 1, efiStub: true },
      initrd: [{ partition: 1, path: "/initrd.img-6.1", bytes: 1 }],
      cmdline: "root=UUID=x ro",
      newCmdline: "root=UUID=x ro",
      kernelFs: { partition: 1, type: "ext4", uuid: "5b0b7a3e-7c5a-4a9e-9a43-1fa2c1e6c2d1" },
    };
    const cfg = convertedGrubCfg(base, 4);
    assert.match(cfg, /^search --no-floppy --fs-uuid --set=root 5b0b7a3e-7c5a-4a9e-9a43-1fa2c1e6c2d1$/m);
    assert.match(cfg, /^linux \/vmlinuz-6\.1 root=UUID=x ro$/m);
    assert.match(cfg, /^initrd \/initrd\.img-6\.1$/m);
    assert.doesNotMatch(convertedGrubCfg({ ...base, kernelFs: { ...base.kernelFs, type: "vfat" } }, 1), /search/);
  });
});

describe("PE/COFF signatures and the bzImage header (real Debian files)", () => {
  let appliance: Appliance;
  let chain: Gen2BootChain;
  let work: string;
  before(
    async () => {
      appliance = await ensureAppliance();
      work = await mkdtemp(join(tmpdir(), "vmhost-convert-pe-"));
      chain = await debianSignedBootChain(work);
    },
    { timeout: 20 * 60_000 },
  );
  test("shim: signed through the Microsoft UEFI CA -> MicrosoftUEFICertificateAuthority; its vendor CA signed GRUB and the kernel", async (t) => {
    t.after(() => rm(work, { recursive: true, force: true }));
    const shim = await readFile(chain.shim);
    const t1 = templateForLoader(shim);
    assert.equal(t1.template, "MicrosoftUEFICertificateAuthority");
    assert.equal(t1.issuer, "Microsoft Corporation UEFI CA 2011");
    const vendor = shimVendorCertificate(shim);
    assert.ok(vendor, "shim has a .vendor_cert");
    assert.equal(commonName(vendor.subject), "Debian Secure Boot CA");
    const grubSigs = authenticodeSignatures(await readFile(chain.grub));
    assert.ok(grubSigs.some((s) => signedBy(s, vendor)), "GRUB is signed by shim's vendor CA");
    const kernel = await readFile(join(appliance.dir, appliance.manifest.vmlinuz));
    assert.ok(authenticodeSignatures(kernel).some((s) => signedBy(s, vendor)), "the Debian kernel is signed by shim's vendor CA");
    // The same signer certificate checked against a CA that did not issue it.
    const msSigner = authenticodeSignatures(shim)[0]!;
    assert.equal(signedBy(msSigner, vendor), false);
    assert.deepEqual(authenticodeSignatures(await readFile(join(appliance.dir, appliance.manifest.initrd))), [], "not a PE image: no signatures");
    const h = kernelHeader(kernel);
    assert.ok(h);
    assert.equal(h.efiStub, true);
    assert.ok(h.version?.startsWith(appliance.manifest.kernel.release + " "), h.version);
    assert.equal(kernelHeader(shim), undefined, "shim is no bzImage");
  });
});
