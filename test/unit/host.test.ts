import assert from "node:assert/strict";
import { existsSync, realpathSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { isAbsolute, join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  DEBIAN_DIRS,
  clearHostFactsCache,
  debianPackageVersions,
  hostFacts,
  hostPaths,
  parseQemuVersion,
  resolveHostPaths,
} from "../../src/engine/qemu/host.js";

describe("hostFacts on this machine", () => {
  it("finds QEMU, qemu-img, OVMF, SeaBIOS and iPXE with versions", async () => {
    const f = await hostFacts();
    assert.equal(realpathSync(f.qemuBinary), realpathSync("/usr/bin/qemu-system-x86_64"));
    assert.equal(realpathSync(f.qemuImg), realpathSync("/usr/bin/qemu-img"));
    assert.match(f.qemuVersion, /^7\.2\.\d+$/);
    assert.match(f.qemuPackage ?? "", /^Debian 1:7\.2/);
    assert.deepEqual(f.ovmf.plain4m, { code: "/usr/share/OVMF/OVMF_CODE_4M.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.fd" });
    assert.deepEqual(f.ovmf.secure4m, { code: "/usr/share/OVMF/OVMF_CODE_4M.ms.fd", vars: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd" });
    assert.deepEqual(f.ovmf.snakeoil4m, {
      code: "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd",
      vars: "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd",
    });
    assert.equal(f.ovmf.secbootCode4m, "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd");
    assert.match(f.ovmf.version ?? "", /^2022\.11/);
    assert.equal(f.seabios.bios, "/usr/share/seabios/bios-256k.bin");
    assert.match(f.seabios.version ?? "", /^1\.16/);
    assert.equal(f.ipxeRomDir, "/usr/lib/ipxe/qemu");
    assert.equal(f.kvmDevice, existsSync("/dev/kvm"));
    for (const p of [f.qemuBinary, f.qemuImg, f.ovmf.plain4m.code, f.seabios.bios]) assert.ok(isAbsolute(p), p);
  });

  it("is memoized: the second call spawns nothing and returns at once", async () => {
    const a = await hostFacts();
    const t = performance.now();
    const b = await hostFacts();
    assert.ok(performance.now() - t < 5);
    assert.deepEqual(a, b);
    assert.equal(hostPaths(), hostPaths(), "same promise");
  });

  it("hostPaths is quick even uncached (no processes)", async () => {
    clearHostFactsCache();
    const t = performance.now();
    const p = await hostPaths();
    const ms = performance.now() - t;
    assert.equal(p.ovmf.plain4m.code, "/usr/share/OVMF/OVMF_CODE_4M.fd");
    assert.ok(!("qemuVersion" in p));
    assert.ok(ms < 100, `hostPaths took ${ms} ms`);
  });
});

describe("parsers", () => {
  it("parses qemu --version", () => {
    assert.deepEqual(
      parseQemuVersion("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard"),
      { version: "7.2.22", package: "Debian 1:7.2+dfsg-7+deb12u18+b3" },
    );
    assert.deepEqual(parseQemuVersion("QEMU emulator version 8.2.0\n"), { version: "8.2.0" });
    assert.equal(parseQemuVersion("garbage"), undefined);
  });

  it("reads Debian package versions and skips unknown packages", async () => {
    const v = await debianPackageVersions(["ovmf", "no-such-package-vmhost"]);
    assert.match(v.get("ovmf") ?? "", /^2022\./);
    assert.equal(v.has("no-such-package-vmhost"), false);
  });
});

describe("missing pieces are named", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "vmhost-host-test-"));
    await mkdir(join(dir, "ovmf"));
    await mkdir(join(dir, "seabios"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const dirs = (): typeof DEBIAN_DIRS => ({
    ovmfDir: join(dir, "ovmf"),
    seabiosDir: join(dir, "seabios"),
    ipxeDir: join(dir, "ipxe"),
    kvmDevice: join(dir, "kvm"),
  });

  it("everything missing is named at once, in a fixed order", async () => {
    const d = dirs();
    await assert.rejects(resolveHostPaths({ PATH: join(dir, "bin"), VMHOST_QEMU_IMG: join(dir, "nope-img") }, d), {
      code: "host-missing",
      message:
        "qemu-system-x86_64 not found in PATH (install the Debian package qemu-system-x86, or set VMHOST_QEMU); " +
        `VMHOST_QEMU_IMG=${join(dir, "nope-img")}: not an executable file; ` +
        `UEFI firmware missing: ${["OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", "OVMF_CODE_4M.ms.fd", "OVMF_VARS_4M.ms.fd"].map((f) => join(d.ovmfDir, f)).join(", ")} (install the Debian package ovmf); ` +
        `BIOS firmware missing: ${join(d.seabiosDir, "bios-256k.bin")} (install the Debian package seabios)`,
    });
  });

  it("OVMF files and package", async () => {
    await assert.rejects(resolveHostPaths(process.env, dirs()), (err: Error) => {
      assert.match(err.message, /UEFI firmware missing: .*ovmf\/OVMF_CODE_4M\.fd, .*OVMF_VARS_4M\.fd/);
      assert.match(err.message, /install the Debian package ovmf/);
      return true;
    });
  });

  it("SeaBIOS file and package; optional pieces just absent", async () => {
    for (const f of ["OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", "OVMF_CODE_4M.ms.fd", "OVMF_VARS_4M.ms.fd"]) {
      await writeFile(join(dir, "ovmf", f), "x");
    }
    await assert.rejects(resolveHostPaths(process.env, dirs()), /BIOS firmware missing: .*bios-256k\.bin \(install the Debian package seabios\)/);
    await writeFile(join(dir, "seabios", "bios-256k.bin"), "x");
    const p = await resolveHostPaths(process.env, dirs());
    assert.equal(p.ovmf.snakeoil4m, undefined);
    assert.equal(p.ovmf.secbootCode4m, undefined);
    assert.equal(p.ipxeRomDir, undefined);
    assert.equal(p.kvmDevice, false);
  });

  it("QEMU binary: PATH search and VMHOST_QEMU override", async () => {
    // Both programs are missing: both are named, in a fixed order, whichever lookup ends first.
    await assert.rejects(resolveHostPaths({ PATH: join(dir, "bin") }, DEBIAN_DIRS), {
      name: "VmhostError",
      code: "host-missing",
      status: 500,
      message:
        "qemu-system-x86_64 not found in PATH (install the Debian package qemu-system-x86, or set VMHOST_QEMU); " +
        "qemu-img not found in PATH (install the Debian package qemu-utils, or set VMHOST_QEMU_IMG)",
    });
    await assert.rejects(
      resolveHostPaths({ ...process.env, VMHOST_QEMU: join(dir, "nope") }, DEBIAN_DIRS),
      /VMHOST_QEMU=.*nope: not an executable file/,
    );
    const fake = join(dir, "my-qemu");
    await writeFile(fake, "#!/bin/sh\n");
    await chmod(fake, 0o755);
    const p = await resolveHostPaths({ ...process.env, VMHOST_QEMU: fake }, DEBIAN_DIRS);
    assert.equal(p.qemuBinary, fake);
    await assert.rejects(
      resolveHostPaths({ ...process.env, VMHOST_QEMU_IMG: "no-such-qemu-img" }, DEBIAN_DIRS),
      /no-such-qemu-img not found in PATH \(VMHOST_QEMU_IMG=no-such-qemu-img\)/,
    );
  });
});
