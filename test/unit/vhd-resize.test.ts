import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { ShrinkRefusedError, readPartitionTable } from "../../src/images/partitions.js";
import { checkVhd, getVhd, newVhd, resizeVhd } from "../../src/images/vhd.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

async function qemuIo(driver: string, path: string, ...cmds: string[]): Promise<void> {
  await run("qemu-io", ["-f", driver, ...cmds.flatMap((c) => ["-c", c]), path]);
}

const DRIVER: Record<string, string> = { qcow2: "qcow2", vhdx: "vhdx", vhd: "vpc", raw: "raw" };

/** The guest's view as sfdisk and sgdisk see it: the image converted to raw. */
async function guestView(path: string, format: string, work: string): Promise<{ sfdisk: string; verify: string }> {
  const raw = join(work, `view-${Date.now()}-${Math.random().toString(16).slice(2)}.raw`);
  await run("qemu-img", ["convert", "-f", DRIVER[format] ?? format, "-O", "raw", path, raw]);
  try {
    const { stdout: sfdisk } = await run("sfdisk", ["--dump", raw]);
    let verify = "";
    try {
      verify = (await run("sgdisk", ["-v", raw])).stdout;
    } catch (e) {
      verify = String((e as { stdout?: string }).stdout ?? e);
    }
    return { sfdisk: sfdisk.replace(/^device:.*$/m, "").replaceAll(raw, "DISK"), verify };
  } finally {
    await rm(raw, { force: true });
  }
}

describe("resize", () => {
  let dir: string;
  let gpt: string;
  let mbr: string;
  const opts = () => ({ allowedDirs: [dir] });
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "vmhost-resize-test-"));
    // GPT: partition 1 from 1 MiB to 9 MiB, partition 2 from 9 MiB to 21 MiB, on 32 MiB.
    gpt = join(dir, "gpt.img");
    await newVhd({ path: gpt, sizeBytes: 32 * MiB }, opts());
    await run("sgdisk", ["-n", "1:2048:+8M", "-n", "2:0:+12M", gpt]);
    await qemuIo("raw", gpt, "write -P 0x5e 20M 1M");
    // MBR: one partition from 1 MiB to 10 MiB, on 16 MiB.
    mbr = join(dir, "mbr.img");
    await newVhd({ path: mbr, sizeBytes: 16 * MiB }, opts());
    await run("sh", ["-c", `printf 'label: dos\\nstart=2048, size=18432, type=83\\n' | sfdisk -q '${mbr}'`]);
    await qemuIo("raw", mbr, "write -P 0x6f 9M 1M");
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("reads the partition table of any format through qemu-img", async () => {
    for (const format of ["qcow2", "vhdx", "vhd"]) {
      const p = join(dir, `read.${format}`);
      await run("qemu-img", ["convert", "-f", "raw", "-O", DRIVER[format] ?? format, ...(format === "vhd" ? ["-o", "force_size=on"] : []), gpt, p]);
      const t = await readPartitionTable(p, format as "qcow2", 32 * MiB);
      assert.equal(t?.label, "gpt");
      assert.deepEqual(
        t?.partitions.map((x) => [x.number, x.start, x.end]),
        [
          [1, 1 * MiB, 9 * MiB],
          [2, 9 * MiB, 21 * MiB],
        ],
      );
      // 128 entries of 128 bytes (32 sectors) and the backup header.
      assert.equal(t?.gptBackupBytes, 33 * 512);
      assert.equal(t?.minimumSize, 21 * MiB + 33 * 512);
    }
    const m = await readPartitionTable(mbr, "raw", 16 * MiB);
    assert.equal(m?.label, "dos");
    assert.equal(m?.minimumSize, 10 * MiB);
    assert.equal((await getVhd(mbr, opts())).minimumSize, 10 * MiB);
  });

  for (const format of ["qcow2", "raw", "vhdx", "vhd"] as const) {
    it(`${format}: refuses to cut a partition, shrinks to where the GPT allows with the backup table moved, grows`, async () => {
      const p = join(dir, `disk-${format}.${format === "raw" ? "img" : format}`);
      await run("qemu-img", ["convert", "-f", "raw", "-O", DRIVER[format] ?? format, ...(format === "vhd" ? ["-o", "subformat=fixed,force_size=on"] : []), gpt, p]);
      const before = await guestView(p, format, dir);
      assert.match(before.verify, /No problems found/);

      await assert.rejects(resizeVhd(p, 16 * MiB, {}, opts()), (e: unknown) => {
        assert.ok(e instanceof ShrinkRefusedError);
        assert.match(e.message, /cannot shrink .* to 16 MiB: partition 2 ends at 21 MiB, beyond the new size 16 MiB: shrink the partition \(and its file system\) in the guest first; the smallest size now is 21\.02 MiB/);
        return true;
      });
      await assert.rejects(resizeVhd(p, 21 * MiB, {}, opts()), /the backup GPT needs the last 16\.5 KiB of the disk/);
      assert.equal((await getVhd(p, opts())).size, 32 * MiB, "a refused shrink changes nothing");

      const shrunk = await resizeVhd(p, 22 * MiB, {}, opts());
      assert.equal(shrunk.previousSize, 32 * MiB);
      assert.equal(shrunk.disk.size, 22 * MiB);
      assert.equal(shrunk.method, format === "qcow2" || format === "raw" ? "in-place" : "copy");
      assert.equal(shrunk.gptRelocated, true);
      if (format === "vhd") assert.equal(shrunk.disk.vhdType, "Fixed", "a fixed VHD stays fixed");
      const after = await guestView(p, format, dir);
      assert.match(after.verify, /No problems found/, "sgdisk -v finds the GPT whole after the shrink");
      assert.equal(after.sfdisk.replace(/^last-lba:.*$/m, ""), before.sfdisk.replace(/^last-lba:.*$/m, ""), "same partitions, same GUIDs");
      assert.match(after.sfdisk, /^last-lba: 45022$/m, "the table now ends where the 22 MiB disk does");
      await qemuIo(DRIVER[format] ?? format, p, "read -P 0x5e 20M 1M");

      const seen: number[] = [];
      const grown = await resizeVhd(p, 40 * MiB, {}, { ...opts(), onProgress: (f) => seen.push(f) });
      assert.equal(grown.disk.size, 40 * MiB);
      assert.equal(grown.gptRelocated, false);
      assert.equal(seen.at(-1), 1);
      await qemuIo(DRIVER[format] ?? format, p, "read -P 0x5e 20M 1M", "read -P 0 22M 18M");
      const check = await checkVhd(p, opts());
      if (check.supported) assert.equal(check.clean, true, check.report);
      assert.deepEqual((await readdir(dir)).filter((n) => n.endsWith(".tmp")), []);
    });
  }

  it("MBR: refuses to cut the partition, shrinks without touching the table", async () => {
    const p = join(dir, "mbr.qcow2");
    await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", mbr, p]);
    await assert.rejects(resizeVhd(p, 8 * MiB, {}, opts()), /partition 1 ends at 10 MiB, beyond the new size 8 MiB/);
    const r = await resizeVhd(p, 10 * MiB, {}, opts());
    assert.equal(r.gptRelocated, false);
    assert.equal(r.disk.size, 10 * MiB);
    assert.match((await guestView(p, "qcow2", dir)).sfdisk, /start=\s*2048, size=\s*18432, type=83/);
    await qemuIo("qcow2", p, "read -P 0x6f 9M 1M");
  });

  it("a disk without a partition table only grows", async () => {
    const p = join(dir, "blank.vhdx");
    await newVhd({ path: p, sizeBytes: 8 * MiB }, opts());
    await assert.rejects(resizeVhd(p, 4 * MiB, {}, opts()), /it holds no partition table, so vmhost cannot tell where the guest's data ends; only growing is allowed/);
    const r = await resizeVhd(p, 12 * MiB, {}, opts());
    assert.equal(r.disk.size, 12 * MiB);
    assert.equal(r.method, "copy");
    assert.equal(r.disk.vhdType, "Dynamic");
    assert.equal((await stat(p)).mode & 0o777, 0o600, "the replaced file keeps its mode");
  });

  it("refuses a disk in use and sizes that are not whole sectors", async () => {
    await assert.rejects(resizeVhd(gpt, 40 * MiB, {}, { ...opts(), inUse: { vm: "db" } }), /gpt\.img is in use by VM "db": .* before resizing it/);
    await assert.rejects(resizeVhd(gpt, 40 * MiB + 1, {}, opts()), /multiple of 512/);
    assert.equal((await stat(gpt)).size, 32 * MiB);
  });
});
