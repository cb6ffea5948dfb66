import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { ChecksumMismatchError, copySparse } from "../../src/service/travel/copy.js";
import { ImportRefusedError } from "../../src/service/travel/import.js";
import { exportFolderName, inPackage, isSafeRelPath } from "../../src/service/travel/package.js";
import { StorageDirs, storageDirsFromEnv } from "../../src/service/vhd.js";
import { VmHost } from "../../src/service/vmhost.js";
import { VmhostError } from "../../src/util/errors.js";

/**
 * The export's files without booting anything (real qemu-img, real files): sparse copies with
 * their SHA-256, paths that cannot leave the export, an export that is cancelled or finds a dead
 * export's leftovers, an export that was changed after it was made, and --register in place.
 */
const execFileP = promisify(execFile);

describe("copies and paths", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "vmhost-travel-copy-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("a copy keeps holes as holes, has the source's length and the SHA-256 sha256sum prints", async () => {
    const src = join(dir, "sparse.raw");
    const fh = await open(src, "w");
    await fh.write(Buffer.alloc(300_000, 7), 0, 300_000, 5 * 1024 * 1024);
    await fh.write(Buffer.from("tail"), 0, 4, 64 * 1024 * 1024 - 4);
    await fh.close();
    const dst = join(dir, "copy.raw");
    const seen: number[] = [];
    const r = await copySparse(src, dst, { onBytes: (b) => seen.push(b) });
    const { stdout } = await execFileP("sha256sum", [src]);
    assert.equal(r.sha256, stdout.split(" ")[0]);
    assert.equal((await stat(dst)).size, 64 * 1024 * 1024);
    assert.equal(await execFileP("cmp", [src, dst]).then(() => true), true);
    assert.ok((await stat(dst)).blocks * 512 < 1024 * 1024, `only the data is allocated (${(await stat(dst)).blocks * 512} bytes)`);
    assert.ok(r.written < 1024 * 1024);
    assert.deepEqual(seen, [...seen].sort((a, b) => a - b));
    assert.equal(seen.at(-1), 64 * 1024 * 1024);
    await assert.rejects(copySparse(src, dst), (e: unknown) => e instanceof VmhostError && e.code === "exists");
    await assert.rejects(copySparse(src, join(dir, "bad.raw"), { expectSha256: "0".repeat(64) }), ChecksumMismatchError);
  });

  test("paths inside an export never leave it", () => {
    for (const ok of ["Virtual Hard Disks/boot.qcow2", "Snapshots/x/vm.json", "manifest.json"]) assert.equal(isSafeRelPath(ok), true, ok);
    for (const bad of ["../x", "/etc/passwd", "a/../../b", "a/./b", "a//b", ".", "a\\b", ""]) assert.equal(isSafeRelPath(bad), false, bad);
    assert.throws(() => inPackage("/srv/e", "../../etc/shadow"), /not inside its folder/);
    assert.equal(inPackage("/srv/e", "Virtual Hard Disks/a.vhdx"), "/srv/e/Virtual Hard Disks/a.vhdx");
  });

  test("an export's folder is the VM's name unless that cannot be a folder name", () => {
    assert.equal(exportFolderName("Boot Order Example", "id"), "Boot Order Example");
    assert.equal(exportFolderName("a/b", "id"), "a_b");
    assert.equal(exportFolderName("..", "id"), "id");
    assert.equal(exportFolderName(".hidden", "id"), "id");
    assert.equal(exportFolderName("語".repeat(100), "id"), "id", "300 bytes: too long for a file name with the .partial around it");
  });
});

describe("where vmhostd writes (StorageDirs)", () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "vmhost-travel-dirs-"));
    await mkdir(join(root, "home", "disks"), { recursive: true });
    await mkdir(join(root, "extra"));
    await mkdir(join(root, "outside"));
    await symlink(join(root, "outside"), join(root, "home", "escape"));
    await writeFile(join(root, "outside", "disk.vhdx"), "");
    await symlink(join(root, "outside", "disk.vhdx"), join(root, "home", "disks", "link.vhdx"));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test("inside the home and the extra directories only, symlinks resolved; relative paths refused", async () => {
    const dirs = new StorageDirs(join(root, "home"), [join(root, "extra")]);
    assert.equal(await dirs.checkNewFile(join(root, "home", "disks", "new.vhdx")), join(root, "home", "disks", "new.vhdx"));
    assert.equal(await dirs.checkNewFile(join(root, "extra", "new.vhdx")), join(root, "extra", "new.vhdx"));
    const refused = (e: unknown) => e instanceof VmhostError && e.code === "destination-not-allowed" && e.status === 403;
    await assert.rejects(dirs.checkNewFile(join(root, "outside", "new.vhdx")), refused);
    await assert.rejects(dirs.checkNewFile(join(root, "home", "escape", "new.vhdx")), refused, "a symlinked folder leading out");
    await assert.rejects(dirs.checkExistingFile(join(root, "home", "disks", "link.vhdx")), refused, "a symlink to a file outside");
    await assert.rejects(dirs.prepareDir(join(root, "home", "escape", "a", "b")), refused);
    assert.equal((await readdir(join(root, "outside"))).length, 1, "nothing was made outside");
    assert.equal(await dirs.prepareDir(join(root, "home", "exports", "x")), join(root, "home", "exports", "x"));
    await assert.rejects(dirs.checkNewFile("disks/new.vhdx"), /must be an absolute path/);
    assert.deepEqual(storageDirsFromEnv({ VMHOST_STORAGE_DIRS: "/srv/a:relative::/srv/b " }), ["/srv/a", "/srv/b"]);
  });
});

describe("export and import of an Off VM with checkpoints (in process)", () => {
  let home: string;
  let host: VmHost;
  let exports: string;

  before(async () => {
    home = await mkdtemp(join(tmpdir(), "vmhost-travel-unit-"));
    host = new VmHost(home);
    await host.init();
    exports = join(home, "exports");
    await host.vms.create({ name: "alpha", generation: 1, newDisk: { sizeBytes: 16 * 1024 * 1024, format: "qcow2" } });
    await host.checkpoints.create("alpha", { name: "c1" });
    await host.checkpoints.create("alpha", { name: "c2" });
  });
  after(async () => {
    host.close();
    await rm(home, { recursive: true, force: true });
  });

  test("a cancelled export leaves neither its folder nor its unfinished one", async () => {
    const ac = new AbortController();
    await assert.rejects(
      host.exports.export("alpha", { destination: exports }, (f) => (f > 0 ? ac.abort() : undefined), ac.signal),
      (e: unknown) => e instanceof VmhostError && e.code === "aborted",
    );
    assert.deepEqual(await readdir(exports), []);
  });

  test("a dead export's unfinished folder is cleared; the export lists every file with its checksum", async () => {
    const dead = spawn(process.execPath, ["-e", "0"]);
    const pid = await new Promise<number>((resolve) => dead.on("exit", () => resolve(dead.pid!)));
    const partial = join(exports, ".alpha.partial");
    await mkdir(join(partial, "Virtual Machines"), { recursive: true });
    await writeFile(join(partial, ".vmhost-export-owner"), `${pid}\n`);
    const r = await host.exports.export("alpha", { destination: exports });
    assert.equal(r.path, join(exports, "alpha"));
    assert.equal(r.checkpoints, 2);
    assert.deepEqual(await readdir(exports), ["alpha"]);
    const manifest = JSON.parse(await readFile(join(r.path, "manifest.json"), "utf8")) as { files: { path: string }[] };
    assert.equal(manifest.files.length, r.files - 1);
    assert.ok(!manifest.files.some((f) => f.path.includes(".vmhost-export-owner")));
    await assert.rejects(host.exports.export("alpha", { destination: exports }), /exists already/);
  });

  test("an export changed after it was made: compare names the file, import refuses and makes nothing", async () => {
    const tampered = join(home, "tampered");
    await execFileP("cp", ["-a", join(exports, "alpha"), tampered]);
    const img = (await readdir(join(tampered, "Virtual Hard Disks"))).find((f) => f.endsWith(".qcow2"))!;
    // One byte flipped, the length kept.
    const fh = await open(join(tampered, "Virtual Hard Disks", img), "r+");
    const at = (await fh.stat()).size - 1;
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, at);
    await fh.close();
    const report = await host.imports.compare({ path: tampered, mode: "copy", generateNewId: true, name: "beta" });
    assert.equal(report.compatible, false);
    assert.deepEqual(report.items.map((i) => [i.code, i.message.split(":")[0]]), [["manifest-checksum", `Virtual Hard Disks/${img}`]]);
    const disksBefore = (await readdir(join(home, "disks"))).sort();
    await assert.rejects(host.imports.import({ path: tampered, mode: "copy", generateNewId: true, name: "beta" }), (e: unknown) => e instanceof VmhostError && e.code === "checksum-mismatch");
    assert.deepEqual((await host.vms.list()).map((v) => v.name), ["alpha"]);
    assert.deepEqual((await readdir(join(home, "disks"))).sort(), disksBefore, "what was copied before the bad file was found is gone again");
    await rm(tampered, { recursive: true });
  });

  test("an export naming a path outside itself is refused", async () => {
    const evil = join(home, "evil");
    await execFileP("cp", ["-a", join(exports, "alpha"), evil]);
    const vms = join(evil, "Virtual Machines");
    const file = join(vms, (await readdir(vms)).find((f) => f.endsWith(".json"))!);
    const d = JSON.parse(await readFile(file, "utf8")) as { images: { path: string }[] };
    d.images[0]!.path = "../../../etc/shadow";
    await writeFile(file, JSON.stringify(d));
    await assert.rejects(host.imports.compare({ path: evil, mode: "copy", generateNewId: true }), /is not a vmhost export description: images\.0\.path/);
    await rm(evil, { recursive: true });
  });

  test("media are host paths: the import leaves the drives empty and says what they held", async () => {
    const iso = join(home, "tools.iso");
    await writeFile(iso, Buffer.alloc(2048));
    await host.devices.dvdSet("alpha", iso);
    const out = join(home, "exports-media");
    const e = await host.exports.export("alpha", { destination: out });
    const report = await host.imports.compare({ path: e.path, mode: "copy", generateNewId: true, name: "gamma" });
    assert.equal(report.compatible, true);
    assert.deepEqual(report.items.map((i) => [i.code, i.severity]), [["media-not-imported", "warning"]]);
    assert.match(report.items[0]!.message, new RegExp(`held ${iso}`));
    await host.imports.import({ path: e.path, mode: "copy", generateNewId: true, name: "gamma" });
    const gamma = await host.vms.get("gamma");
    assert.deepEqual(gamma.dvdDrives.map((d) => d.path), [null]);
    await host.vms.remove("gamma", true);
    await host.devices.dvdSet("alpha", null);
    await rm(out, { recursive: true });
  });

  test("--register uses the export's files in place, under the rules: a new id needs --copy, the source's id is taken", async () => {
    const pkg = join(exports, "alpha");
    await assert.rejects(host.imports.import({ path: pkg, mode: "register", generateNewId: true }), /--generate-new-id needs --copy/);
    await assert.rejects(host.imports.import({ path: pkg, mode: "register", generateNewId: false }), (e: unknown) => e instanceof ImportRefusedError && e.items.some((i) => i.code === "id-in-use"));
    const source = await host.vms.get("alpha");
    await host.vms.remove("alpha", true);
    const r = await host.imports.import({ path: pkg, mode: "register", generateNewId: false });
    assert.equal(r.id, source.id);
    const vm = await host.vms.get("alpha");
    assert.ok(vm.hardDisks[0]!.path.startsWith(pkg + "/"), vm.hardDisks[0]!.path);
    // The chain is named by absolute paths now, all inside the export.
    const { stdout } = await execFileP("qemu-img", ["info", "--backing-chain", "--output=json", "-f", "qcow2", vm.hardDisks[0]!.path]);
    const chain = JSON.parse(stdout) as { filename: string; "backing-filename"?: string }[];
    assert.equal(chain.length, 3);
    for (const m of chain) {
      assert.ok(m.filename.startsWith(pkg + "/"), m.filename);
      if (m["backing-filename"]) assert.ok(m["backing-filename"].startsWith("/"), m["backing-filename"]);
    }
    const list = await host.checkpoints.list("alpha");
    assert.deepEqual(list.checkpoints.map((c) => c.name), ["c1", "c2"]);
    await host.checkpoints.apply("alpha", "c1");
    await host.checkpoints.remove("alpha", "c2");
    assert.deepEqual((await host.checkpoints.list("alpha")).checkpoints.map((c) => c.name), ["c1"]);
  });
});
