import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { link, lstat, mkdtemp, open, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { diskIdentity, findDiskConflict } from "../../src/images/identity.js";
import { sweepStaleTemps } from "../../src/images/staging.js";
import { checkVhd, compactVhd, convertVhd, DiskInUseError, getVhd, newVhd, type InUseCheck } from "../../src/images/vhd.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

async function qemuImg(...args: string[]): Promise<string> {
  return (await run("qemu-img", args)).stdout;
}

/** qemu-io commands on an image; fails (exit 1) when a command fails, e.g. a read -P pattern mismatch. */
async function qemuIo(driver: string, path: string, ...cmds: string[]): Promise<void> {
  await run("qemu-io", ["-f", driver, ...cmds.flatMap((c) => ["-c", c]), path]);
}

async function sha256(path: string): Promise<string> {
  return createHash("sha256").update(await readFile(path)).digest("hex");
}

async function identical(a: [string, string], b: [string, string]): Promise<boolean> {
  try {
    await run("qemu-img", ["compare", "-f", a[1], "-F", b[1], a[0], b[0]]);
    return true;
  } catch {
    return false;
  }
}

async function leftovers(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.endsWith(".tmp"));
}

describe("VHD tools on real images", () => {
  let dir: string;
  const opts = () => ({ allowedDirs: [dir] });
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "vmhost-vhd-test-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  describe("new", () => {
    it("makes each format and type, with the exact size, published 0600", async () => {
      const cases: [string, "Fixed" | "Dynamic" | undefined, string, string][] = [
        ["n-dyn.vhdx", undefined, "vhdx", "Dynamic"],
        ["n-fixed.vhdx", "Fixed", "vhdx", "Fixed"],
        ["n-dyn.vhd", "Dynamic", "vhd", "Dynamic"],
        ["n-fixed.vhd", "Fixed", "vhd", "Fixed"],
        ["n.qcow2", undefined, "qcow2", "Dynamic"],
        ["n.img", undefined, "raw", "Fixed"],
      ];
      for (const [name, type, format, vhdType] of cases) {
        const p = join(dir, name);
        const d = await newVhd({ path: p, sizeBytes: 12 * MiB + 512, ...(type ? { type } : {}) }, opts());
        assert.equal(d.vhdFormat, format, name);
        assert.equal(d.vhdType, vhdType, name);
        assert.equal(d.size, 12 * MiB + 512, name);
        assert.equal(d.parentChain.length, 0);
        assert.equal((await stat(p)).mode & 0o777, 0o600, name);
      }
      // A fixed VHD is its data plus the 512-byte footer, which the guest cannot reach when QEMU opens
      // it as vpc: writing the disk's last sector leaves the footer whole.
      const fixedVhd = join(dir, "n-fixed.vhd");
      assert.equal((await stat(fixedVhd)).size, 12 * MiB + 1024);
      await qemuIo("vpc", fixedVhd, `write -P 0xff ${12 * MiB} 512`);
      const bytes = await readFile(fixedVhd);
      assert.equal(bytes.subarray(bytes.length - 512, bytes.length - 504).toString("latin1"), "conectix");
      assert.equal(bytes[bytes.length - 513], 0xff, "the last sector is just before the footer");
      assert.equal((await getVhd(fixedVhd, opts())).vhdType, "Fixed");
      assert.deepEqual(await leftovers(dir), []);
    });

    it("refuses what cannot be made, before making anything", async () => {
      await assert.rejects(newVhd({ path: join(dir, "x.qcow2"), sizeBytes: MiB, type: "Fixed" }, opts()), /cannot make a fixed qcow2 disk: qcow2 has no fixed subformat/);
      await assert.rejects(newVhd({ path: join(dir, "x.img"), sizeBytes: MiB, type: "Dynamic" }, opts()), /cannot make a dynamic raw disk/);
      await assert.rejects(newVhd({ path: join(dir, "x.img"), sizeBytes: MiB, format: "qcow2" }, opts()), /x\.img: its extension says raw but the format asked for is qcow2/);
      await assert.rejects(newVhd({ path: join(dir, "x.disk"), sizeBytes: MiB }, opts()), /cannot tell which format to write/);
      await assert.rejects(newVhd({ path: join(dir, "n.qcow2"), sizeBytes: MiB }, opts()), /n\.qcow2 already exists; refusing to overwrite it/);
      await assert.rejects(newVhd({ path: join(dir, "x.vhd"), sizeBytes: 3000 * 1024 * MiB }, opts()), /a VHD holds at most 1.99 TiB, asked for 2.93 TiB: use vhdx/);
      await assert.rejects(newVhd({ path: join(dir, "x.vhdx"), sizeBytes: 1000 }, opts()), /multiple of 512/);
      assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith("x.")), []);
    });

    it("makes a differencing disk whose parent is never written", async () => {
      const parent = join(dir, "parent.vhdx");
      await newVhd({ path: parent, sizeBytes: 8 * MiB }, opts());
      await qemuIo("vhdx", parent, "write -P 0x11 0 1M");
      const before = await sha256(parent);
      const child = join(dir, "child.qcow2");
      const d = await newVhd({ path: child, parent: { path: parent } }, opts());
      assert.equal(d.vhdType, "Differencing");
      assert.equal(d.parentPath, parent);
      assert.deepEqual(d.parentChain, [{ path: parent, vhdFormat: "vhdx", vhdType: "Dynamic", size: 8 * MiB }]);
      const info = JSON.parse(await qemuImg("info", "--output=json", "-f", "qcow2", child));
      assert.equal(info["backing-filename"], parent, "absolute backing path");
      assert.equal(info["backing-filename-format"], "vhdx", "explicit backing format");
      await qemuIo("qcow2", child, "read -P 0x11 0 1M", "write -P 0x22 0 512k", "write -P 0x33 4M 1M");
      assert.equal(await sha256(parent), before, "the parent is unchanged after writes to the child");
      await qemuIo("vhdx", parent, "read -P 0x11 0 1M");

      await assert.rejects(newVhd({ path: join(dir, "child.vhdx"), parent: { path: parent } }, opts()), /a differencing disk is written as qcow2/);
      await assert.rejects(newVhd({ path: join(dir, "small.qcow2"), parent: { path: parent }, sizeBytes: 4 * MiB }, opts()), /cannot be smaller than its parent/);
      await assert.rejects(newVhd({ path: join(dir, "elsewhere.qcow2"), parent: { path: parent } }, { allowedDirs: [join(dir, "sub")] }), /lies outside the directories vmhost keeps disks in/);
      const bigger = await newVhd({ path: join(dir, "bigger.qcow2"), parent: { path: parent }, sizeBytes: 16 * MiB }, opts());
      assert.equal(bigger.size, 16 * MiB);
    });
  });

  describe("get", () => {
    it("reports format, type, sizes, the parent chain and who holds it", async () => {
      const base = join(dir, "g-base.vhd");
      await newVhd({ path: base, sizeBytes: 32 * MiB, type: "Fixed" }, opts());
      const mid = join(dir, "g-mid.qcow2");
      await newVhd({ path: mid, parent: { path: base } }, opts());
      const top = join(dir, "g-top.qcow2");
      await newVhd({ path: top, parent: { path: mid } }, opts());
      const inUse: InUseCheck = (disk) => (disk.path === top ? { vm: "app" } : undefined);
      const d = await getVhd(top, { ...opts(), inUse });
      assert.equal(d.vhdFormat, "qcow2");
      assert.equal(d.vhdType, "Differencing");
      assert.equal(d.size, 32 * MiB);
      assert.equal(d.fileSize, (await stat(top)).size);
      assert.ok(d.allocatedSize > 0);
      assert.equal(d.blockSize, 65536);
      assert.equal(d.parentPath, mid);
      assert.deepEqual(
        d.parentChain.map((p) => [p.path, p.vhdFormat, p.vhdType]),
        [
          [mid, "qcow2", "Differencing"],
          [base, "vhd", "Fixed"],
        ],
      );
      assert.equal(d.attached, true);
      assert.equal(d.attachedTo, "app");
      assert.equal(d.minimumSize, undefined, "no partition table: no minimum size");
      const b = await getVhd(base, { ...opts(), inUse });
      assert.equal(b.attached, false);
    });
  });

  describe("convert", () => {
    let source: string;
    before(async () => {
      source = join(dir, "src.img");
      await newVhd({ path: source, sizeBytes: 24 * MiB }, opts());
      await qemuIo("raw", source, "write -P 0xa1 0 1M", "write -P 0xb2 7M 2M", "write -P 0xc3 16M 3M", "write -P 0xd4 23M 1M");
    });

    it("round-trips raw -> VHD fixed -> VHD dynamic -> VHDX fixed -> VHDX dynamic -> qcow2 -> raw, data intact", async () => {
      const steps: [string, "Fixed" | "Dynamic" | undefined, string, string, string][] = [
        ["rt-fixed.vhd", "Fixed", "vhd", "vpc", "Fixed"],
        ["rt-dyn.vhd", "Dynamic", "vhd", "vpc", "Dynamic"],
        ["rt-fixed.vhdx", "Fixed", "vhdx", "vhdx", "Fixed"],
        ["rt-dyn.vhdx", "Dynamic", "vhdx", "vhdx", "Dynamic"],
        ["rt.qcow2", undefined, "qcow2", "qcow2", "Dynamic"],
        ["rt-back.img", undefined, "raw", "raw", "Fixed"],
      ];
      let prev = source;
      for (const [name, type, format, driver, vhdType] of steps) {
        const out = join(dir, name);
        const d = await convertVhd(prev, out, type ? { type } : {}, opts());
        assert.equal(d.vhdFormat, format, name);
        assert.equal(d.vhdType, vhdType, name);
        assert.equal(d.size, 24 * MiB, `${name}: exact size`);
        assert.ok(await identical([source, "raw"], [out, driver]), `${name} holds the source's data`);
        const check = await checkVhd(out, opts());
        if (format === "vhdx" || format === "qcow2") {
          assert.equal(check.supported, true, name);
          assert.equal(check.clean, true, `${name}: ${check.report}`);
        } else assert.equal(check.supported, false, `${name}: qemu-img cannot check ${format}`);
        prev = out;
      }
      assert.equal(await sha256(join(dir, "rt-back.img")), await sha256(source));
      // The VHD footer is at the end of the fixed one and copied to offset 0 in the dynamic one.
      const fixed = await readFile(join(dir, "rt-fixed.vhd"));
      assert.equal(fixed.length, 24 * MiB + 512);
      assert.equal(fixed.subarray(fixed.length - 512, fixed.length - 504).toString("latin1"), "conectix");
      assert.equal((await readFile(join(dir, "rt-dyn.vhd"))).subarray(0, 8).toString("latin1"), "conectix");
    });

    it("keeps the source's type unless told otherwise, and reports progress from 0 to 1", async () => {
      const seen: number[] = [];
      const d = await convertVhd(join(dir, "rt-fixed.vhd"), join(dir, "keeps.vhdx"), {}, { ...opts(), onProgress: (f) => seen.push(f) });
      assert.equal(d.vhdType, "Fixed");
      assert.ok(seen.length >= 2, `progress reports: ${seen.join(" ")}`);
      assert.equal(seen.at(-1), 1);
      assert.ok(seen.some((f) => f > 0 && f < 1), `an intermediate report: ${seen.join(" ")}`);
      for (let i = 1; i < seen.length; i++) assert.ok((seen[i] ?? 0) > (seen[i - 1] ?? 0), "strictly increasing");
      // A differencing source comes out standalone.
      const diff = join(dir, "cv-diff.qcow2");
      await newVhd({ path: diff, parent: { path: source, format: "raw" } }, opts());
      await qemuIo("qcow2", diff, "write -P 0xee 2M 1M");
      const flat = await convertVhd(diff, join(dir, "cv-flat.vhdx"), {}, opts());
      assert.equal(flat.vhdType, "Dynamic");
      assert.equal(flat.parentChain.length, 0);
      await qemuIo("vhdx", join(dir, "cv-flat.vhdx"), "read -P 0xa1 0 1M", "read -P 0xee 2M 1M");
    });

    it("refuses a destination that exists or disagrees with its format", async () => {
      await assert.rejects(convertVhd(source, join(dir, "rt.qcow2"), {}, opts()), /already exists/);
      await assert.rejects(convertVhd(source, join(dir, "bad.vhdx"), { format: "qcow2" }, opts()), /its extension says vhdx but the format asked for is qcow2/);
      await assert.rejects(convertVhd(source, join(dir, "bad.qcow2"), { type: "Fixed" }, opts()), /cannot make a fixed qcow2 disk/);
      assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith("bad.")), []);
    });

    it("refuses a source a running VM writes, but reads a base it only reads", async () => {
      await assert.rejects(convertVhd(source, join(dir, "busy.vhdx"), {}, { ...opts(), inUse: { vm: "web" } }), (e: unknown) => {
        assert.ok(e instanceof DiskInUseError);
        assert.equal(e.vm, "web");
        assert.match(e.message, /src\.img is in use by VM "web": turn the VM off .* before converting it/);
        return true;
      });
      // The service's check: findDiskConflict against the running VMs' disks.
      const running = [{ owner: "db", disk: await diskIdentity(join(dir, "cv-diff.qcow2"), undefined, opts()) }];
      const inUse: InUseCheck = (disk, access) => {
        const c = findDiskConflict(disk, running, access);
        return c ? { vm: c.owner } : undefined;
      };
      // db's overlay only reads src.img: converting src.img is allowed.
      await convertVhd(source, join(dir, "shared-base.qcow2"), {}, { ...opts(), inUse });
      // db writes cv-diff.qcow2: converting that is not.
      await assert.rejects(convertVhd(join(dir, "cv-diff.qcow2"), join(dir, "busy2.vhdx"), {}, { ...opts(), inUse }), /cv-diff\.qcow2 is in use by VM "db"/);
      assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith("busy")), []);
    });

    it("removes the partial output when qemu-img fails half-way, is cancelled, or progress reporting throws", async () => {
      // A qcow2 whose second L1 entry points at an unaligned offset: qemu-img reads the first 512 MiB
      // of guest data, then fails on the next (QEMU docs/interop/qcow2.txt: L1 entries must be cluster aligned).
      const broken = join(dir, "broken.qcow2");
      await qemuImg("create", "-q", "-f", "qcow2", broken, "1G");
      await qemuIo("qcow2", broken, "write -P 0x5a 0 1M", "write -P 0x5b 600M 1M");
      const fh = await open(broken, "r+");
      const header = Buffer.alloc(48);
      await fh.read(header, 0, 48, 0);
      const l1 = Number(header.readBigUInt64BE(40));
      const entry = Buffer.alloc(8);
      entry.writeBigUInt64BE(0x8000000000000200n); // "copied" flag + offset 0x200: not cluster aligned
      await fh.write(entry, 0, 8, l1 + 8);
      await fh.close();
      const seen: number[] = [];
      await assert.rejects(convertVhd(broken, join(dir, "from-broken.vhdx"), {}, { ...opts(), onProgress: (f) => seen.push(f) }), /qemu-img convert failed: .*(unaligned|Input\/output error)/i);
      assert.ok(seen.length > 0, "qemu-img had started writing");
      assert.ok(!(await readdir(dir)).includes("from-broken.vhdx"));
      const check = await checkVhd(broken, opts());
      assert.equal(check.clean, false, "qemu-img check sees the damage");
      assert.match(check.report, /unaligned|ERROR/i);
      assert.deepEqual(await leftovers(dir), []);

      const ac = new AbortController();
      ac.abort();
      await assert.rejects(convertVhd(source, join(dir, "cancelled.vhdx"), {}, { ...opts(), signal: ac.signal }), /cancelled/);
      await assert.rejects(
        convertVhd(source, join(dir, "thrown.vhdx"), {}, {
          ...opts(),
          onProgress: () => {
            throw new Error("the progress bar broke");
          },
        }),
        /the progress bar broke/,
      );
      assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith("cancelled") || n.startsWith("thrown")), []);
      assert.deepEqual(await leftovers(dir), []);
    });
  });

  describe("compact", () => {
    it("gives back the space of zeroed blocks in a dynamic VHDX, data unchanged", async () => {
      const p = join(dir, "c.vhdx");
      await newVhd({ path: p, sizeBytes: 64 * MiB }, opts());
      await qemuIo("vhdx", p, "write -P 0x77 0 2M", "write -P 0 8M 32M");
      const reference = join(dir, "c-reference.img");
      await qemuImg("convert", "-f", "vhdx", "-O", "raw", p, reference);
      const seen: number[] = [];
      const r = await compactVhd(p, {}, { ...opts(), onProgress: (f) => seen.push(f) });
      assert.ok(r.disk.fileSize < r.fileSizeBefore - 16 * MiB, `file ${r.fileSizeBefore} -> ${r.disk.fileSize} bytes`);
      assert.equal(r.disk.vhdType, "Dynamic");
      assert.ok(await identical([reference, "raw"], [p, "vhdx"]));
      assert.equal((await checkVhd(p, opts())).clean, true);
      assert.equal(seen.at(-1), 1);
      assert.deepEqual(await leftovers(dir), []);
    });

    it("keeps a differencing qcow2 on its parent, and the mode of the original", async () => {
      const base = join(dir, "cb.qcow2");
      await newVhd({ path: base, sizeBytes: 32 * MiB }, opts());
      await qemuIo("qcow2", base, "write -P 0x10 0 4M");
      const child = join(dir, "cc.qcow2");
      await newVhd({ path: child, parent: { path: base } }, opts());
      await qemuIo("qcow2", child, "write -P 0x20 1M 1M", "write -P 0 8M 16M");
      const { chmod } = await import("node:fs/promises");
      await chmod(child, 0o640);
      const before = (await stat(child)).size;
      const r = await compactVhd(child, {}, opts());
      assert.equal(r.disk.parentPath, base);
      assert.ok(r.disk.fileSize < before, `${before} -> ${r.disk.fileSize}`);
      assert.equal((await stat(child)).mode & 0o777, 0o640);
      await qemuIo("qcow2", child, "read -P 0x10 0 1M", "read -P 0x20 1M 1M", "read -P 0x10 2M 2M", "read -P 0 8M 16M");
      assert.equal((await checkVhd(child, opts())).clean, true);
    });

    it("compacts the file a symlink names, leaving the link a link", async () => {
      const real = join(dir, "real-target.qcow2");
      await newVhd({ path: real, sizeBytes: 16 * MiB }, opts());
      await qemuIo("qcow2", real, "write -P 0 0 8M");
      const alias = join(dir, "alias.qcow2");
      await symlink(real, alias);
      const before = (await stat(real)).size;
      await compactVhd(alias, {}, opts());
      assert.ok((await lstat(alias)).isSymbolicLink());
      assert.ok((await stat(real)).size < before);
    });

    it("says which formats cannot be compacted, and refuses disks in use or hard-linked", async () => {
      await assert.rejects(compactVhd(join(dir, "n.img"), {}, opts()), /cannot compact .*n\.img: a raw image has no structure to compact.*fallocate --dig-holes/);
      await assert.rejects(compactVhd(join(dir, "n-fixed.vhdx"), {}, opts()), /a fixed vhdx keeps every block allocated/);
      await assert.rejects(compactVhd(join(dir, "n-fixed.vhd"), {}, opts()), /a fixed VHD is its data followed by a footer/);
      await assert.rejects(compactVhd(join(dir, "n.qcow2"), {}, { ...opts(), inUse: { vm: "web" } }), /in use by VM "web"/);
      await link(join(dir, "n.qcow2"), join(dir, "n-link.qcow2"));
      await assert.rejects(compactVhd(join(dir, "n.qcow2"), {}, opts()), /has 2 names \(hard links\)/);
    });
  });

  describe("temp files of dead writers", () => {
    it("are swept; a live writer's are kept", async () => {
      const pidMax = Number((await readFile("/proc/sys/kernel/pid_max", "utf8")).trim());
      const dead = join(dir, `.x.vhdx.${pidMax + 1}.0badc0de.tmp`);
      const live = join(dir, `.y.vhdx.${process.pid}.0badc0de.tmp`);
      await writeFile(dead, "partial");
      await writeFile(live, "partial");
      assert.deepEqual(await sweepStaleTemps(dir), [dead]);
      assert.deepEqual(await leftovers(dir), [`.y.vhdx.${process.pid}.0badc0de.tmp`]);
      await rm(live);
    });
  });
});
