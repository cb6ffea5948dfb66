import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  PROBE_ITERATIONS,
  ROM_LAYOUT,
  ROM_SIZE,
  SERIAL_END_BYTE,
  SERIAL_START_BYTE,
  buildProbeRom,
  decide,
  probeAccelerator,
  probeQemuArgs,
  readBootId,
  resolveAccelerator,
} from "../../src/engine/qemu/accel.js";

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString("hex");

describe("probe ROM", () => {
  const rom = buildProbeRom(0x01020304);

  it("is 64 KiB", () => {
    assert.equal(rom.length, ROM_SIZE);
    assert.equal(ROM_SIZE, 65536);
  });

  it("has a far jump to F000:0000 at the reset vector", () => {
    assert.equal(hex(rom.subarray(0xfff0, 0xfff5)), "ea000000f0");
  });

  it("writes the start byte to COM1 in real mode, then enters protected mode", () => {
    const entry = rom.subarray(ROM_LAYOUT.entry, ROM_LAYOUT.entry + 32);
    // cli; mov dx,0x3f8; mov al,'S'; out dx,al
    assert.equal(hex(entry.subarray(0, 7)), "fabaf803b053ee");
    assert.equal(entry[5], SERIAL_START_BYTE);
    // o32 lgdt cs:[0x40]; mov eax,cr0; or al,1; mov cr0,eax; jmp dword 0x08:0xf0080
    assert.equal(hex(entry.subarray(7, 30)), "662e0f0116" + "4000" + "0f20c0" + "0c01" + "0f22c0" + "66ea" + "80000f00" + "0800");
    // GDTR: limit 23, base 0xF0048; flat code and data descriptors.
    assert.equal(hex(rom.subarray(ROM_LAYOUT.gdtr, ROM_LAYOUT.gdtr + 6)), "170048000f00");
    assert.equal(hex(rom.subarray(ROM_LAYOUT.gdt + 8, ROM_LAYOUT.gdt + 24)), "ffff0000009acf00" + "ffff00000092cf00");
  });

  it("counts N down in a dec/jnz loop, writes the end byte and exits via isa-debug-exit", () => {
    const code = rom.subarray(ROM_LAYOUT.code32, ROM_LAYOUT.code32 + 18);
    // mov ecx,0x01020304; dec ecx; jnz -3; mov al,'E'; out dx,al; xor eax,eax; out 0xf4,al; hlt; jmp -3
    assert.equal(hex(code), "b904030201" + "49" + "75fd" + "b045" + "ee" + "31c0" + "e6f4" + "f4" + "ebfd");
    assert.equal(code[9], SERIAL_END_BYTE);
  });

  it("fills the rest with hlt and rejects bad iteration counts", () => {
    assert.equal(rom[0x8000], 0xf4);
    assert.equal(rom[0xffff], 0xf4);
    assert.throws(() => buildProbeRom(0), RangeError);
    assert.throws(() => buildProbeRom(2 ** 32), RangeError);
    assert.throws(() => buildProbeRom(1.5), RangeError);
    assert.equal(buildProbeRom().length, ROM_SIZE);
  });

  it("runs under QEMU as argv, never a shell string", () => {
    const args = probeQemuArgs("tcg", "/tmp/x.rom");
    assert.deepEqual(args.slice(0, 4), ["-machine", "pc", "-accel", "tcg"]);
    assert.ok(args.includes("-nodefaults") && args.includes("-no-user-config"));
    assert.equal(args[args.indexOf("-bios") + 1], "/tmp/x.rom");
    assert.equal(args[args.indexOf("-device") + 1], "isa-debug-exit,iobase=0xf4,iosize=0x04");
  });
});

describe("decide", () => {
  it("no /dev/kvm -> TCG", () => {
    assert.deepEqual(decide({ kvmAvailable: false, kvmDeviceError: "ENOENT", tcgMs: 100 }), {
      accel: "tcg",
      reason: "/dev/kvm not present",
    });
  });

  it("/dev/kvm not openable -> TCG with the errno", () => {
    const d = decide({ kvmAvailable: false, kvmDeviceError: "EACCES", tcgMs: 100 });
    assert.equal(d.accel, "tcg");
    assert.equal(d.reason, "/dev/kvm present but not accessible: EACCES");
  });

  it("KVM fails to start -> TCG with QEMU's message", () => {
    const msg = "qemu-system-x86_64: failed to initialize kvm: Permission denied";
    const d = decide({ kvmAvailable: true, kvmError: msg, tcgMs: 100 });
    assert.equal(d.accel, "tcg");
    assert.equal(d.reason, `KVM failed to start: ${msg}`);
  });

  it("KVM loop slower than half of TCG -> TCG, emulated", () => {
    const d = decide({ kvmAvailable: true, kvmMs: 60, tcgMs: 100 });
    assert.equal(d.accel, "tcg");
    assert.equal(d.reason, "/dev/kvm present but guest code is emulated (loop took 60 ms under KVM vs 100 ms under TCG)");
  });

  it("KVM loop unfinished (timeout or cutoff) -> TCG, emulated", () => {
    const d = decide({ kvmAvailable: true, kvmUnfinishedMs: 3000.4, tcgMs: 98.2 });
    assert.equal(d.accel, "tcg");
    assert.equal(d.reason, "/dev/kvm present but guest code is emulated (loop took >3000 ms under KVM vs 98 ms under TCG)");
  });

  it("KVM clearly faster -> KVM", () => {
    const d = decide({ kvmAvailable: true, kvmMs: 9.34, tcgMs: 101 });
    assert.deepEqual(d, { accel: "kvm", reason: "KVM runs guest code natively (9.3 ms vs 101 ms under TCG)" });
  });

  it("threshold is 0.5x TCG", () => {
    assert.equal(decide({ kvmAvailable: true, kvmMs: 49.9, tcgMs: 100 }).accel, "kvm");
    assert.equal(decide({ kvmAvailable: true, kvmMs: 50, tcgMs: 100 }).accel, "tcg");
  });

  it("TCG probe failed: KVM judged against native speed", () => {
    const fast = decide({ kvmAvailable: true, kvmMs: 12, tcgError: "boom", iterations: PROBE_ITERATIONS });
    assert.equal(fast.accel, "kvm");
    assert.match(fast.reason, /natively \(12 ms; TCG probe failed: boom\)/);
    const slow = decide({ kvmAvailable: true, kvmMs: 900, tcgError: "boom" });
    assert.equal(slow.accel, "tcg");
    assert.match(slow.reason, /emulated/);
  });
});

const hasKvmDevice = existsSync("/dev/kvm");

describe("real probe on this machine", () => {
  it("decides, with timings, in bounded time", { timeout: 30_000 }, async () => {
    const started = performance.now();
    const d = await probeAccelerator();
    const elapsed = performance.now() - started;
    console.log(`probe: ${JSON.stringify(d)} (${Math.round(elapsed)} ms)`);
    assert.ok(d.tcgLoopMs !== undefined && d.tcgLoopMs > 0, "TCG loop measured");
    assert.match(d.qemuVersion ?? "", /^\d+\.\d+/);
    assert.ok(!Number.isNaN(Date.parse(d.probedAt)));
    assert.equal(d.bootId, await readBootId());
    if (!hasKvmDevice) {
      assert.deepEqual([d.accel, d.reason], ["tcg", "/dev/kvm not present"]);
      return;
    }
    // This machine's /dev/kvm emulates guest code: it must come out as TCG.
    assert.equal(d.accel, "tcg");
    assert.match(d.reason, /^\/dev\/kvm present but guest code is emulated \(loop took >?[\d.]+ ms under KVM vs [\d.]+ ms under TCG\)$/);
    assert.ok(elapsed < 10_000, `probe took ${elapsed} ms`);
  });
});

describe("probe plumbing with a stand-in for QEMU under KVM", () => {
  // Real KVM is not available here: a wrapper answers for "-accel kvm" and runs the real QEMU otherwise.
  let dir: string;
  const wrapper = async (kvmBranch: string): Promise<string> => {
    dir = await mkdtemp(join(tmpdir(), "vmhost-accel-fake-"));
    const path = join(dir, "qemu");
    await writeFile(
      path,
      `#!/bin/sh\ncase " $* " in *" -accel kvm "*) ${kvmBranch} ;; esac\nexec qemu-system-x86_64 "$@"\n`,
    );
    await chmod(path, 0o755);
    return path;
  };
  const kvmOpenable = hasKvmDevice && process.getuid?.() === 0;

  it("picks KVM when the KVM guest runs the loop at native speed", { skip: !kvmOpenable, timeout: 30_000 }, async () => {
    try {
      const d = await probeAccelerator({ qemuBinary: await wrapper("printf SE; exit 1") });
      assert.equal(d.accel, "kvm");
      assert.match(d.reason, /^KVM runs guest code natively \([\d.]+ ms vs [\d.]+ ms under TCG\)$/);
      assert.ok(d.kvmLoopMs !== undefined && d.tcgLoopMs !== undefined && d.kvmLoopMs < d.tcgLoopMs);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("falls back to TCG with QEMU's message when KVM does not start", { skip: !kvmOpenable, timeout: 30_000 }, async () => {
    try {
      const msg = "qemu-system-x86_64: -accel kvm: failed to initialize kvm: Operation not permitted";
      const d = await probeAccelerator({
        qemuBinary: await wrapper(`echo 'qemu-system-x86_64: warning: noise' >&2; echo '${msg}' >&2; exit 1`),
      });
      assert.equal(d.accel, "tcg");
      assert.equal(d.reason, `KVM failed to start: ${msg}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("bounds a guest that never starts", { skip: !kvmOpenable, timeout: 30_000 }, async () => {
    try {
      const started = performance.now();
      const d = await probeAccelerator({ qemuBinary: await wrapper("exec sleep 30"), timeoutMs: 1000 });
      assert.equal(d.accel, "tcg");
      assert.match(d.reason, /emulated \(loop took >\d+ ms under KVM vs [\d.]+ ms under TCG\)/);
      assert.ok(performance.now() - started < 5000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("resolveAccelerator", () => {
  it("honours VMHOST_ACCEL and rejects bad values", async () => {
    const saved = process.env["VMHOST_ACCEL"];
    try {
      process.env["VMHOST_ACCEL"] = "kvm";
      const d = await resolveAccelerator("/nonexistent/never-written.json");
      assert.equal(d.accel, "kvm");
      assert.equal(d.reason, "forced by VMHOST_ACCEL");
      process.env["VMHOST_ACCEL"] = "hvf";
      await assert.rejects(resolveAccelerator("/nonexistent/x.json"), /VMHOST_ACCEL=hvf is not valid/);
    } finally {
      if (saved === undefined) delete process.env["VMHOST_ACCEL"];
      else process.env["VMHOST_ACCEL"] = saved;
    }
  });

  it("caches by boot id and QEMU version, re-probes on mismatch, damage or refresh", { timeout: 60_000 }, async () => {
    const saved = process.env["VMHOST_ACCEL"];
    delete process.env["VMHOST_ACCEL"];
    const dir = await mkdtemp(join(tmpdir(), "vmhost-accel-test-"));
    try {
      const cache = join(dir, "host", "accel.json");
      const first = await resolveAccelerator(cache);
      const onDisk = JSON.parse(await readFile(cache, "utf8")) as Record<string, unknown>;
      assert.equal(onDisk["probedAt"], first.probedAt);
      assert.equal(onDisk["bootId"], await readBootId());

      const again = await resolveAccelerator(cache);
      assert.equal(again.probedAt, first.probedAt, "served from the cache");

      // A decision from another boot is not trusted.
      await writeFile(cache, JSON.stringify({ ...onDisk, bootId: "other-boot", accel: "kvm", probedAt: "2000-01-01T00:00:00.000Z" }));
      const reprobed = await resolveAccelerator(cache);
      assert.notEqual(reprobed.probedAt, "2000-01-01T00:00:00.000Z");
      assert.equal(reprobed.accel, first.accel);

      // Nor from another QEMU version.
      await writeFile(cache, JSON.stringify({ ...onDisk, qemuVersion: "1.0.0", probedAt: "2000-01-01T00:00:00.000Z" }));
      assert.notEqual((await resolveAccelerator(cache)).probedAt, "2000-01-01T00:00:00.000Z");

      // A damaged cache is just re-probed and rewritten.
      await writeFile(cache, "{not json");
      const repaired = await resolveAccelerator(cache);
      assert.equal(JSON.parse(await readFile(cache, "utf8")).probedAt, repaired.probedAt);

      const refreshed = await resolveAccelerator(cache, { refresh: true });
      assert.notEqual(refreshed.probedAt, repaired.probedAt);
    } finally {
      if (saved !== undefined) process.env["VMHOST_ACCEL"] = saved;
      await rm(dir, { recursive: true, force: true });
    }
  });
});
