import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import fc from "fast-check";
import { type CpioEntry, FsTree, gzipInitramfs, normalizeArchivePath, readNewc, writeNewc } from "../../src/images/appliance/cpio.js";

function sample(): FsTree {
  return new FsTree()
    .file("init", "#!/bin/sh\necho hi\n", 0o755)
    .file("etc/os-release", "ID=test\n")
    .symlink("bin/sh", "/bin/busybox")
    .file("bin/busybox", Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]), 0o755)
    .charDevice("dev/console", 5, 1)
    .dir("tmp", 0o1777);
}

test("newc: header layout, 4-byte alignment and trailer", () => {
  const buf = writeNewc([{ type: "file", path: "a", mode: 0o644, data: Buffer.from("xyz") }]);
  assert.equal(buf.toString("ascii", 0, 6), "070701");
  // ino=1, mode=0100644, uid, gid, nlink=1, mtime=0, filesize=3, ..., namesize=2 ("a\0")
  assert.equal(buf.toString("ascii", 6, 14), "00000001");
  assert.equal(buf.toString("ascii", 14, 22), (0o100644).toString(16).padStart(8, "0"));
  assert.equal(buf.toString("ascii", 54, 62), "00000003");
  assert.equal(buf.toString("ascii", 94, 102), "00000002");
  // 110 + 2 = 112 (aligned), then data "xyz" + 1 pad byte
  assert.equal(buf.toString("ascii", 110, 111), "a");
  assert.equal(buf.toString("ascii", 112, 115), "xyz");
  assert.equal(buf[115], 0);
  assert.equal(buf.toString("ascii", 116, 122), "070701");
  assert.ok(buf.includes("TRAILER!!!"));
  assert.equal(buf.length % 4, 0);
});

test("FsTree: parents first, sorted, reproducible", () => {
  const entries = sample().entries();
  const paths = entries.map((e) => e.path);
  assert.deepEqual(paths, [...paths].sort());
  for (const e of entries) {
    const parent = e.path.includes("/") ? e.path.slice(0, e.path.lastIndexOf("/")) : ".";
    if (e.path !== ".") assert.ok(paths.indexOf(parent) < paths.indexOf(e.path), `${parent} before ${e.path}`);
  }
  assert.deepEqual(writeNewc(sample().entries()), writeNewc(sample().entries()));
  assert.throws(() => new FsTree().file("a", "x").file("a/b", "y"), /not a directory/);
  assert.throws(() => new FsTree().dir("a").file("a", "x"), /is a directory/);
  assert.throws(() => normalizeArchivePath("a/../b"), /\.\./);
  assert.equal(normalizeArchivePath("/usr//bin/"), "usr/bin");
});

test("newc: round trip through readNewc and gzip", () => {
  const entries = sample().entries();
  const back = readNewc(gunzipSync(gzipInitramfs(writeNewc(entries))));
  assert.deepEqual(back, entries);
});

const nameArb = fc.stringMatching(/^[a-z0-9._-]{1,12}$/).filter((s) => s !== "." && s !== "..");
const entryArb: fc.Arbitrary<CpioEntry> = fc.oneof(
  fc.record({ type: fc.constant("file" as const), path: nameArb, mode: fc.integer({ min: 0, max: 0o7777 }), data: fc.uint8Array({ maxLength: 70 }).map((a) => Buffer.from(a)) }),
  fc.record({ type: fc.constant("dir" as const), path: nameArb, mode: fc.integer({ min: 0, max: 0o7777 }) }),
  fc.record({ type: fc.constant("symlink" as const), path: nameArb, target: fc.stringMatching(/^[/a-z0-9._-]{1,40}$/) }),
  fc.record({ type: fc.constant("char" as const), path: nameArb, mode: fc.integer({ min: 0, max: 0o7777 }), major: fc.integer({ min: 0, max: 255 }), minor: fc.integer({ min: 0, max: 255 }) }),
);

test("newc: any entry list survives write + read (property)", () => {
  fc.assert(
    fc.property(fc.array(entryArb, { maxLength: 20 }), (generated) => {
      const entries = generated.map((e) => ({ ...e })); // fast-check records have a null prototype
      const buf = writeNewc(entries);
      assert.equal(buf.length % 4, 0);
      assert.deepEqual(readNewc(buf), entries);
    }),
    { numRuns: 300 },
  );
});

const busybox = ["/bin/busybox", "/usr/bin/busybox"].find((p) => spawnSync(p, ["true"]).status === 0);

test("newc: busybox cpio lists and extracts the archive", { skip: busybox ? false : "busybox not installed on the host" }, async () => {
  const tree = new FsTree().file("init", "#!/bin/sh\n", 0o755).file("etc/motd", "hello\n").symlink("bin/sh", "busybox").dir("var/lib/hyperv");
  const archive = writeNewc(tree.entries());
  const list = spawnSync(busybox!, ["cpio", "-t"], { input: archive });
  assert.equal(list.status, 0, list.stderr.toString());
  assert.deepEqual(list.stdout.toString().trim().split("\n").sort(), [".", "bin", "bin/sh", "etc", "etc/motd", "init", "var", "var/lib", "var/lib/hyperv"]);

  const dir = await mkdtemp(join(tmpdir(), "vmhost-cpio-"));
  try {
    const file = join(dir, "a.cpio");
    await writeFile(file, archive);
    const x = spawnSync(busybox!, ["cpio", "-i", "-d", "-F", file], { cwd: dir });
    assert.equal(x.status, 0, x.stderr.toString());
    assert.equal(await readFile(join(dir, "etc/motd"), "utf8"), "hello\n");
    assert.equal(await readlink(join(dir, "bin/sh")), "busybox");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
