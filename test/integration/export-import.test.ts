import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { BOOT_TIMEOUT_MS, READY, TestHost } from "../helpers/harness.js";
import { TestNetns } from "../helpers/netns.js";

/**
 * Export-VM and Import-VM through the real CLI (issue 11, "Must show"): a running Gen2 appliance
 * VM with two checkpoints (one Production, one Standard) and a File boot entry its guest made
 * with efibootmgr is exported without being stopped; the export is imported on the same host as
 * a copy with a new id. The copy resumes from the captured memory (the same boot of the same
 * guest), both checkpoints apply with the data the guest wrote before each, its NVRAM holds the
 * source's boot entries (the File entry byte for byte), and the source runs on with its own
 * checkpoints as they were. Then Compare-VM on an export whose switch this host no longer has.
 */
const execFileP = promisify(execFile);
const SRC = "Travel Source";
const COPY = "Travel Copy";
let host: TestHost;

before(async () => {
  host = await TestHost.create();
});
after(async () => {
  await host.cleanup();
});

/** The 64 MiB data disk in the guest (the boot disk is 96 MiB). */
const DISK = "d=$(awk '$3 == 65536 { print $4 }' /proc/partitions | tail -1)";

// Markers the tests wait for are split with "" in the typed command, so the console's echo of the command never matches.

/** Writes `mark` into the data disk's first sector (no file system: what the disk holds is what is read). */
async function mark(vm: string, m: string): Promise<void> {
  await host.run(vm, `${DISK}; printf 'MARK:${m}:' | dd of=/dev/$d bs=512 count=1 conv=sync,fsync 2>/dev/null && echo mark""ed-${m}`, new RegExp(`marked-${m}`), 60_000);
}

/** Reads the data disk's first sector past the page cache. */
async function readMark(vm: string): Promise<string> {
  const text = await host.run(vm, `${DISK}; echo 3 > /proc/sys/vm/drop_caches; echo got-$(dd if=/dev/$d bs=512 count=1 2>/dev/null | tr -d '\\000')-end`, /got-MARK:\w+:-end/, 60_000);
  return /got-MARK:(\w+):-end/.exec(text.slice(text.lastIndexOf("got-MARK:")))![1]!;
}

async function bootId(vm: string): Promise<string> {
  const text = await host.run(vm, "echo boot-id-$(cat /proc/sys/kernel/random/boot_id)-end", /boot-id-[0-9a-f-]+-end/);
  return /boot-id-([0-9a-f-]+)-end/.exec(text.slice(text.lastIndexOf("boot-id-")))![1]!;
}

interface Entry {
  id: string;
  bootType: string;
  description: string;
  firmwarePath: string;
  device: { type: string; ref: string } | null;
  optionalDataHex: string;
  status: string;
}
interface Shown {
  id: string;
  state: string;
  disks: { path: string; format: string }[];
  nics: { name: string; macAddress: string; dynamicMac: boolean }[];
}
interface CpList {
  current: string | null;
  checkpoints: { id: string; name: string; parentId: string | null; type: string; hasMemory: boolean }[];
}

/** An entry as it must come over: its kind, the device it is for and its name (a network entry's MAC is the adapter's, new in the copy). */
function entryKey(e: Entry): string {
  return [e.bootType, e.device ? `${e.device.type} ${e.device.ref}` : "-", e.description.replace(/MAC:[0-9A-F]{12}/, "MAC:*"), e.bootType === "Network" ? "" : e.firmwarePath].join(" | ");
}

test(
  "a running Gen2 VM with two checkpoints is exported without stopping it; its copy with a new id resumes, its checkpoints apply with their data, its boot entries are the source's",
  { timeout: 1_200_000 },
  async (t) => {
    await host.ok(["new", SRC, "--generation", "2", "--appliance"]);
    await host.ok(["start", SRC]);
    await host.waitConsole(SRC, READY, BOOT_TIMEOUT_MS);
    // Read first: the kernel makes boot_id when it is first read, so every memory captured later holds it.
    const sourceBoot = await bootId(SRC);
    await host.ok(["disk", "add", SRC, "--new", "64M:qcow2"]);
    // A File entry, as an OS installer makes one.
    await host.run(SRC, "efibootmgr -q -c -d /dev/sda -p 1 -L 'travel test' -l '\\EFI\\BOOT\\BOOTX64.EFI' && echo entry''-made", /entry-made/, 60_000);
    const fwSource = await host.json<{ bootOrder: Entry[] }>(["firmware", "get", SRC]);
    const fileEntries = fwSource.bootOrder.filter((e) => e.bootType === "File");
    assert.equal(fileEntries.length, 1, JSON.stringify(fwSource.bootOrder.map((e) => [e.id, e.bootType, e.description])));

    await mark(SRC, "one");
    await host.ok(["checkpoint", SRC, "--name", "one"]);
    await host.ok(["set", SRC, "--checkpoint-type", "Standard"]);
    await mark(SRC, "two");
    await host.ok(["checkpoint", SRC, "--name", "two"]);
    await mark(SRC, "now");
    const treeBefore = await host.json<CpList>(["checkpoint", "list", SRC]);
    assert.deepEqual(treeBefore.checkpoints.map((c) => [c.name, c.type, c.hasMemory]), [["one", "Production", false], ["two", "Standard", true]]);
    assert.equal(await bootId(SRC), sourceBoot);
    const source = await host.json<Shown>(["show", SRC]);

    const exports = join(host.home, "exports");
    const started = Date.now();
    const exported = await host.json<{ path: string; state: string; captureLiveState: string; checkpoints: number; files: number }>(["export", SRC, exports]);
    t.diagnostic(`export of the running VM: ${((Date.now() - started) / 1000).toFixed(1)} s, ${exported.files} files`);
    assert.equal(exported.path, join(exports, SRC));
    assert.deepEqual([exported.state, exported.captureLiveState, exported.checkpoints], ["Running", "CaptureSavedState", 2]);

    // Laid out as Hyper-V does, nothing half-made beside it, every file in the manifest with its SHA-256.
    assert.deepEqual((await readdir(exported.path)).sort(), ["Snapshots", "Virtual Hard Disks", "Virtual Machines", "manifest.json"]);
    assert.deepEqual((await readdir(exports)).filter((f) => f.startsWith(".")), []);
    const manifest = JSON.parse(await readFile(join(exported.path, "manifest.json"), "utf8")) as { files: { path: string; size: number; sha256: string }[] };
    for (const f of manifest.files) {
      const { stdout } = await execFileP("sha256sum", [join(exported.path, f.path)]);
      assert.equal(stdout.split(" ")[0], f.sha256, f.path);
      assert.equal((await stat(join(exported.path, f.path))).size, f.size, f.path);
    }
    assert.ok(manifest.files.some((f) => /^Virtual Machines\/[0-9a-f-]{36}\.vmrs$/.test(f.path)), "the captured memory is in the export");
    assert.equal(manifest.files.filter((f) => f.path.startsWith("Snapshots/") && f.path.endsWith("/vm.json")).length, 2);
    // Backing files are named relative to the export: the chain resolves inside it.
    const vmJson = manifest.files.find((f) => /^Virtual Machines\/[0-9a-f-]{36}\.json$/.test(f.path))!;
    const description = JSON.parse(await readFile(join(exported.path, vmJson.path), "utf8")) as { config: { hardDisks: { path: string; format: string }[] } };
    for (const d of description.config.hardDisks) {
      const { stdout } = await execFileP("qemu-img", ["info", "--backing-chain", "--output=json", "-f", d.format, join(exported.path, d.path)]);
      for (const member of JSON.parse(stdout) as { filename: string }[]) assert.ok(member.filename.startsWith(exported.path + "/"), `${member.filename} lies in the export`);
    }

    // The source runs on, where it was, with its own checkpoints only (the capture was merged away).
    assert.equal(await host.state(SRC), "Running");
    assert.equal(await bootId(SRC), sourceBoot);
    assert.equal(await readMark(SRC), "now");
    const treeAfter = await host.json<CpList>(["checkpoint", "list", SRC]);
    assert.deepEqual(treeAfter.checkpoints.map((c) => [c.id, c.name, c.parentId]), treeBefore.checkpoints.map((c) => [c.id, c.name, c.parentId]));
    assert.equal(treeAfter.current, treeBefore.current);

    // The other two captures: frozen through the agent (the guest logs it), and crash-consistent; neither keeps memory.
    for (const [capture, dir] of [["CaptureDataConsistentState", "exports-data"], ["CaptureCrashConsistentState", "exports-crash"]] as const) {
      const from = (await host.consoleText(SRC)).length;
      const e = await host.json<{ path: string; captureLiveState: string; messages: string[] }>(["export", SRC, join(host.home, dir), "--capture-live-state", capture]);
      assert.equal(e.captureLiveState, capture);
      const files = JSON.parse(await readFile(join(e.path, "manifest.json"), "utf8")) as { files: { path: string }[] };
      assert.ok(!files.files.some((f) => f.path.endsWith(".vmrs")), `${capture} keeps no memory`);
      const log = (await host.consoleText(SRC)).slice(from);
      if (capture === "CaptureDataConsistentState") assert.ok(/fsfreeze-hook freeze/.test(log) && /fsfreeze-hook thaw/.test(log), "the guest was frozen and thawed");
      else assert.doesNotMatch(log, /fsfreeze-hook freeze/, "a crash-consistent capture does not freeze the guest");
      assert.deepEqual((await host.json<CpList>(["checkpoint", "list", SRC])).checkpoints.map((c) => c.name), ["one", "two"]);
    }
    assert.equal(await readMark(SRC), "now");

    // Import a copy with a new id.
    const imported = await host.json<{ id: string; state: string; checkpoints: number }>(["import", exported.path, "--copy", "--generate-new-id", "--name", COPY]);
    assert.notEqual(imported.id, source.id);
    assert.deepEqual([imported.state, imported.checkpoints], ["Saved", 2]);
    const copy = await host.json<Shown>(["show", COPY]);
    assert.equal(copy.state, "Saved");
    assert.ok(copy.nics.every((n) => n.dynamicMac) && copy.nics[0]!.macAddress !== source.nics[0]!.macAddress, "new dynamic MAC addresses");
    for (const d of copy.disks) assert.ok(d.path.startsWith(join(host.home, "disks") + "/") && d.path.includes(copy.id), d.path);

    // The NVRAM came over: the File entry as it was, every other entry for the same device.
    const fwCopy = await host.json<{ bootOrder: Entry[] }>(["firmware", "get", COPY]);
    const fileCopy = fwCopy.bootOrder.filter((e) => e.bootType === "File");
    assert.deepEqual(
      fileCopy.map((e) => [e.id, e.description, e.firmwarePath, e.optionalDataHex]),
      fileEntries.map((e) => [e.id, e.description, e.firmwarePath, e.optionalDataHex]),
    );
    // Entries vmhost keeps pending while the source runs (the hot-added disk's) are made in the copy's store at import.
    const held = (e: Entry) => e.status === "stored" || e.status === "pending";
    assert.deepEqual(fwCopy.bootOrder.filter(held).map(entryKey).sort(), fwSource.bootOrder.filter(held).map(entryKey).sort());

    // The copy resumes from the captured memory: the same boot of the guest, the data of that moment.
    await host.ok(["start", COPY]);
    assert.equal(await bootId(COPY), sourceBoot, "the copy runs on from the source's memory");
    assert.equal(await readMark(COPY), "now");

    // Its checkpoints apply with the data written before each.
    let from = (await host.consoleText(COPY)).length;
    await host.ok(["checkpoint", "apply", COPY, "one"]);
    await host.waitConsole(COPY, READY, BOOT_TIMEOUT_MS, from);
    assert.equal(await readMark(COPY), "one");
    assert.notEqual(await bootId(COPY), sourceBoot, "a Production checkpoint applies cold");
    from = (await host.consoleText(COPY)).length;
    await host.ok(["checkpoint", "apply", COPY, "two"]);
    assert.equal(await readMark(COPY), "two");
    const resumed = await bootId(COPY);
    if (resumed !== sourceBoot) t.diagnostic((await host.ok(["events", COPY])).slice(-3000));
    assert.equal(resumed, sourceBoot, "a Standard checkpoint resumes the guest where it was");
    const copyFile = (await host.json<{ bootOrder: Entry[] }>(["firmware", "get", COPY])).bootOrder.filter((e) => e.bootType === "File");
    assert.deepEqual(copyFile.map((e) => [e.description, e.firmwarePath]), fileEntries.map((e) => [e.description, e.firmwarePath]), "the checkpoint's NVRAM holds the File entry too");

    // The source is still running, untouched by all of it.
    assert.equal(await host.state(SRC), "Running");
    assert.equal(await readMark(SRC), "now");
    assert.equal(await bootId(SRC), sourceBoot);

    // The images of both check clean.
    await host.ok(["turn-off", COPY]);
    const { stdout } = await execFileP("find", [join(host.home, "disks"), "-name", "*.qcow2", "-path", `*${copy.id}*`]);
    const images = stdout.trim().split("\n").filter(Boolean);
    assert.ok(images.length >= 4, images.join("\n"));
    for (const img of images) assert.match((await execFileP("qemu-img", ["check", "-f", "qcow2", img])).stdout, /No errors were found/, img);
  },
);

test("importing the same export again under the source's name is refused by rule, naming the fix", { timeout: 120_000 }, async () => {
  const r = await host.cli(["import", join(host.home, "exports", SRC), "--copy", "--generate-new-id"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /vm-name-in-use/);
  assert.match(r.stderr, /--name/);
});

test("Compare-VM on an export whose switch this host does not have names the switch and changes nothing", { timeout: 300_000 }, async () => {
  const ns = await TestNetns.create("travel");
  const other = await TestHost.create({ netns: ns.name });
  try {
    await other.ok(["switch", "new", "lab", "--type", "private"]);
    await other.ok(["new", "switched", "--generation", "1", "--new-disk", "16M:qcow2"]);
    await other.ok(["nic", "add", "switched", "--switch", "lab"]);
    const exp = await other.json<{ path: string }>(["export", "switched", join(other.home, "exports")]);
    await other.ok(["remove", "switched", "--delete-disks"]);
    await other.ok(["switch", "remove", "lab"]);

    const snapshot = async () => {
      const { stdout } = await execFileP("find", [other.home, "-path", `${other.home}/run`, "-prune", "-o", "-type", "f", "-not", "-name", "*.log", "-not", "-name", "*.log.1", "-printf", "%p %s %T@\\n"]);
      return stdout.split("\n").sort().join("\n");
    };
    const before = await snapshot();
    const r = await other.cli(["import", exp.path, "--copy", "--generate-new-id", "--compare"]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /ERROR switch-missing: switch "lab" does not exist on this host; adapter "Network Adapter 2" of the VM connects to it/);
    assert.match(r.stdout, /fix: make it here \(vmhost switch new "lab"/);
    assert.match(r.stdout, /not compatible with this host: nothing was changed/);
    const asJson = await other.cli(["import", exp.path, "--copy", "--generate-new-id", "--compare", "--json"]);
    assert.equal(asJson.code, 1);
    const report = JSON.parse(asJson.stdout) as { compatible: boolean; items: { code: string; severity: string }[] };
    assert.equal(report.compatible, false);
    assert.deepEqual(report.items.map((i) => [i.code, i.severity]), [["switch-missing", "error"]]);
    assert.equal(await snapshot(), before, "compare changed no file of the host");
    assert.deepEqual(await other.json<unknown[]>(["list"]), []);
    // Import refuses for the same reason; with the adapter mapped to a switch this host has, it imports.
    const refused = await other.cli(["import", exp.path, "--copy", "--generate-new-id"]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /switch "lab" does not exist/);
    assert.deepEqual(await other.json<unknown[]>(["list"]), []);
    await other.ok(["import", exp.path, "--copy", "--generate-new-id", "--switch", "lab=Default Switch"]);
    const nics = (await other.json<{ nics: { switchName: string }[] }>(["show", "switched"])).nics;
    assert.ok(nics.every((n) => n.switchName === "Default Switch"));
  } finally {
    await other.cleanup();
    await ns.cleanup();
  }
});
