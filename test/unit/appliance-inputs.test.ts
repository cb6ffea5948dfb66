import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { homedir, hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { type ResolvedInputs, parseAptPolicy, parseKernelDependency } from "../../src/images/appliance/apt.js";
import { applianceId, defaultApplianceCacheDir, manifestPackages } from "../../src/images/appliance/index.js";
import { parseLdd } from "../../src/images/appliance/ldd.js";
import { acquireLock } from "../../src/images/appliance/lock.js";

test("parseAptPolicy: candidate and installed versions per package", () => {
  const out = `linux-image-amd64:
  Installed: (none)
  Candidate: 6.1.192-2
  Version table:
     6.1.192-2 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
busybox-static:
  Installed: 1:1.35.0-4+deb12u1+b1
  Candidate: 1:1.35.0-4+deb12u1+b1
  Version table:
 *** 1:1.35.0-4+deb12u1+b1 500
        100 /var/lib/dpkg/status
nosuch:
  Installed: (none)
  Candidate: (none)
`;
  const p = parseAptPolicy(out);
  assert.deepEqual(p.get("linux-image-amd64"), { candidate: "6.1.192-2" });
  assert.deepEqual(p.get("busybox-static"), { installed: "1:1.35.0-4+deb12u1+b1", candidate: "1:1.35.0-4+deb12u1+b1" });
  assert.deepEqual(p.get("nosuch"), {});
});

test("parseKernelDependency: the versioned image behind linux-image-amd64", () => {
  assert.deepEqual(parseKernelDependency("Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n"), {
    package: "linux-image-6.1.0-56-amd64",
    version: "6.1.192-2",
  });
  assert.deepEqual(parseKernelDependency("Depends: initramfs-tools | linux-initramfs-tool, linux-image-6.12.9-amd64\n"), { package: "linux-image-6.12.9-amd64" });
  assert.throws(() => parseKernelDependency("Package: x\n"), /no Depends/);
});

test("parseLdd: libraries and the loader, no vdso; missing libraries are errors", () => {
  const out = `\tlinux-vdso.so.1 (0x00007ffd)
\tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007f)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f)
`;
  assert.deepEqual(parseLdd(out), ["/lib/x86_64-linux-gnu/libudev.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]);
  assert.deepEqual(parseLdd("\tnot a dynamic executable\n"), []);
  assert.throws(() => parseLdd("\tlibfoo.so.1 => not found\n", "/usr/bin/x"), /libfoo\.so\.1 not found/);
});

function inputs(): ResolvedInputs {
  return {
    kernel: { metaVersion: "6.1.192-2", package: "linux-image-6.1.0-56-amd64", version: "6.1.192-2", release: "6.1.0-56-amd64" },
    debs: { "busybox-static": "1:1.35.0-4", "linux-image-6.1.0-56-amd64": "6.1.192-2", "shim-signed": "1.51" },
    hostPackages: { "qemu-guest-agent": "1:7.2", libc6: "2.36" },
    hostPrograms: { qemuGa: "/usr/sbin/qemu-ga", efibootmgr: "/usr/bin/efibootmgr" },
    hostLibraries: ["/lib/x86_64-linux-gnu/libc.so.6"],
    debianVersion: "12.11",
  };
}

test("applianceId: short, stable, and changes with any package version", () => {
  const a = applianceId(inputs());
  assert.match(a, /^[0-9a-f]{12}$/);
  assert.equal(applianceId(inputs()), a);
  const newer = inputs();
  newer.kernel = { ...newer.kernel, metaVersion: "6.1.193-1" };
  assert.notEqual(applianceId(newer), a);
  const newerQga = inputs();
  newerQga.hostPackages["qemu-guest-agent"] = "1:7.3";
  assert.notEqual(applianceId(newerQga), a);
  assert.deepEqual(Object.keys(manifestPackages(inputs())), ["busybox-static", "libc6", "linux-image-6.1.0-56-amd64", "linux-image-amd64", "qemu-guest-agent", "shim-signed"]);
});

test("defaultApplianceCacheDir: $VMHOST_APPLIANCE_CACHE, else by user", () => {
  const saved = process.env.VMHOST_APPLIANCE_CACHE;
  try {
    process.env.VMHOST_APPLIANCE_CACHE = "/srv/x/../appliance-cache";
    assert.equal(defaultApplianceCacheDir(), "/srv/appliance-cache");
    delete process.env.VMHOST_APPLIANCE_CACHE;
    const expected = process.getuid?.() === 0 ? "/var/cache/vmhost/appliance" : join(homedir(), ".cache/vmhost/appliance");
    assert.equal(defaultApplianceCacheDir(), expected);
  } finally {
    if (saved === undefined) delete process.env.VMHOST_APPLIANCE_CACHE;
    else process.env.VMHOST_APPLIANCE_CACHE = saved;
  }
});

const lockModule = new URL("../../src/images/appliance/lock.js", import.meta.url).href;

/** A separate node process that takes the lock, says "locked", then holds it for `holdMs`. */
function lockHolder(path: string, holdMs: number) {
  const code = `const { acquireLock } = await import(${JSON.stringify(lockModule)});
const release = await acquireLock(${JSON.stringify(path)});
console.log("locked");
await new Promise((r) => setTimeout(r, ${holdMs}));
await release();`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  const locked = new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (b: Buffer) => b.toString().includes("locked") && resolve());
    child.on("exit", (c) => reject(new Error(`lock holder exited ${c} before locking`)));
  });
  return { child, locked };
}

test("lock: waits for a live holder in another process, then takes over", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-lock-"));
  try {
    const path = join(dir, ".build.lock");
    const holder = lockHolder(path, 1200);
    await holder.locked;
    const t0 = Date.now();
    const release = await acquireLock(path, { pollMs: 50 });
    const waited = Date.now() - t0;
    assert.ok(waited >= 700, `waited only ${waited} ms for the holder`);
    const info = JSON.parse(await readFile(path, "utf8")) as { pid: number };
    assert.equal(info.pid, process.pid);
    await release();
    await assert.rejects(stat(path), /ENOENT/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("lock: a lock left by a killed process is stale and is taken at once", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-lock-"));
  try {
    const path = join(dir, ".build.lock");
    const holder = lockHolder(path, 60_000);
    await holder.locked;
    const gone = new Promise((r) => holder.child.on("exit", r));
    holder.child.kill("SIGKILL");
    await gone;
    const t0 = Date.now();
    const lines: string[] = [];
    const release = await acquireLock(path, { pollMs: 50, timeoutMs: 5000, log: (l) => lines.push(l) });
    assert.ok(Date.now() - t0 < 2000);
    assert.ok(lines.some((l) => /stale/.test(l)), lines.join("\n"));
    await release();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("lock: in one process, the second caller waits for the first", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vmhost-lock-"));
  try {
    const path = join(dir, ".build.lock");
    const r1 = await acquireLock(path, { pollMs: 20 });
    let second = false;
    const p2 = acquireLock(path, { pollMs: 20 }).then((r) => ((second = true), r));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(second, false);
    await r1();
    const r2 = await p2;
    assert.equal(second, true);
    await r2();
    // A dead pid's lock (a finished process) from this host is stale.
    const deadPid = spawnSync("true").pid!;
    await writeFile(path, JSON.stringify({ pid: deadPid, host: hostname(), since: "x" }));
    const r3 = await acquireLock(path, { pollMs: 20, timeoutMs: 2000 });
    await r3();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
