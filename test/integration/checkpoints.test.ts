import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { BOOT_TIMEOUT_MS, READY, TestHost } from "../helpers/harness.js";

/**
 * Checkpoints of a running Gen2 appliance VM named as the user's own documents name one
 * ("Boot Order Example"): Standard (memory: the guest goes on where it was, its RAM file system
 * included, and the NVRAM's boot order comes back), Production (the guest's file systems frozen
 * and thawed, cold boot on apply, disk contents of that moment), a tree with a branch whose
 * middle checkpoint is removed while the VM runs, every image checked, and the 50-checkpoint limit.
 */
const execFileP = promisify(execFile);
const VM = "Boot Order Example";
let host: TestHost;

before(async () => {
  host = await TestHost.create();
});
after(async () => {
  await host.cleanup();
});

interface FirmwareGet {
  bootOrder: { id: string; description: string; firmwarePath: string; inBootOrder: boolean }[];
  pending: unknown[];
}
interface CpList {
  current: string | null;
  checkpoints: { id: string; name: string; parentId: string | null; type: string; hasMemory: boolean }[];
}

async function bootId(): Promise<string> {
  const text = await host.run(VM, "echo boot-id-$(cat /proc/sys/kernel/random/boot_id)-end", /boot-id-[0-9a-f-]+-end/);
  return /boot-id-([0-9a-f-]+)-end/.exec(text.slice(text.lastIndexOf("boot-id-")))![1]!;
}

async function waitReadyFrom(from: number): Promise<void> {
  await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS, from);
}

test("a VM named with spaces works end to end; the same name in other case is refused by rule", { timeout: BOOT_TIMEOUT_MS + 60_000 }, async () => {
  await host.ok(["new", VM, "--generation", "2", "--appliance"]);
  const r = await host.cli(["new", "boot order example", "--generation", "2"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /rule vm-name-in-use/);
  await host.ok(["start", VM]);
  await waitReadyFrom(0);
  const shown = await host.json<{ name: string; state: string }>(["show", VM]);
  assert.deepEqual([shown.name, shown.state], [VM, "Running"]);
  await host.ok(["firmware", "set", VM, "--first-boot-device", "Network Adapter"]);
  const fw = await host.json<FirmwareGet>(["firmware", "get", VM]);
  assert.deepEqual(fw.pending.map((p) => (p as { op: string }).op), ["first-boot-device"], "kept pending while QEMU owns the NVRAM");
  const list = await host.json<{ name: string }[]>(["list"]);
  assert.deepEqual(list.map((v) => v.name), [VM]);
  // Back to the disk first, so the cold boots below start from it (both stay pending until then).
  await host.ok(["firmware", "set", VM, "--first-boot-device", "SCSI 0:0"]);
});

test("Standard checkpoint: RAM and the NVRAM's boot order come back on apply, and the guest did not reboot", { timeout: 300_000 }, async () => {
  await host.ok(["set", VM, "--checkpoint-type", "Standard"]);
  await host.run(VM, "echo ram-before > /tmp/value; echo wrote-ram", /wrote-ram/);
  const id0 = await bootId();
  const fw0 = await host.json<FirmwareGet>(["firmware", "get", VM]);
  const order0 = fw0.bootOrder.filter((e) => e.inBootOrder).map((e) => e.id);
  const cp = await host.json<{ checkpoint: { id: string; hasMemory: boolean; type: string }; pausedMs: number }>(["checkpoint", VM, "--name", "standard"]);
  assert.equal(cp.checkpoint.type, "Standard");
  assert.equal(cp.checkpoint.hasMemory, true);
  console.log(`standard checkpoint: guest paused ${cp.pausedMs.toFixed(0)} ms`);

  // After the checkpoint: the RAM value changes, and the guest itself rewrites BootOrder in the NVRAM.
  await host.run(VM, "echo ram-after > /tmp/value; echo changed-ram", /changed-ram/);
  const reversed = [...order0].reverse().map((id) => id.slice(4)).join(",");
  await host.run(VM, `efibootmgr -o ${reversed} >/dev/null && echo order-set`, /order-set/, 60_000);
  const fw1 = await host.json<FirmwareGet>(["firmware", "get", VM]);
  assert.deepEqual(fw1.bootOrder.filter((e) => e.inBootOrder).map((e) => e.id), [...order0].reverse(), "the guest's efibootmgr changed the NVRAM");

  await host.ok(["checkpoint", "apply", VM, "standard"]);
  assert.equal(await host.state(VM), "Running");
  const text = await host.run(VM, "echo value-is-$(cat /tmp/value)", /value-is-ram-\w+/);
  assert.match(text.slice(text.lastIndexOf("value-is-")), /value-is-ram-before/);
  assert.equal(await bootId(), id0, "the guest went on where it was: same boot");
  const fw2 = await host.json<FirmwareGet>(["firmware", "get", VM]);
  assert.deepEqual(fw2.bootOrder.filter((e) => e.inBootOrder).map((e) => e.id), order0, "the checkpoint's boot order is back");
  // Changes that were pending when the checkpoint was taken are pending again (they belong to that moment).
  assert.deepEqual(fw2.pending, fw0.pending);
});

test("Production checkpoint: the guest logs freeze and thaw; apply boots cold with the disk as it was", { timeout: 400_000 }, async () => {
  await host.ok(["set", VM, "--checkpoint-type", "Production"]);
  await host.ok(["turn-off", VM]);
  await host.ok(["disk", "add", VM, "--new", "64M:qcow2"]);
  let from = (await host.consoleText(VM)).length;
  await host.ok(["start", VM]);
  await waitReadyFrom(from);
  await host.run(
    VM,
    "d=$(awk '$3 == 65536 { print $4 }' /proc/partitions | tail -1); mke2fs -q /dev/$d && mkdir -p /mnt/data && mount -t ext2 /dev/$d /mnt/data && echo A > /mnt/data/before && sync && echo mounted-$d",
    /mounted-sd\w/,
    60_000,
  );
  const id0 = await bootId();
  from = (await host.consoleText(VM)).length;
  const cp = await host.json<{ checkpoint: { type: string; hasMemory: boolean } }>(["checkpoint", VM, "--name", "production"]);
  assert.deepEqual([cp.checkpoint.type, cp.checkpoint.hasMemory], ["Production", false]);
  const log = await host.waitConsole(VM, "fsfreeze-hook thaw", 30_000, from);
  assert.ok(log.indexOf("fsfreeze-hook freeze") >= 0 && log.indexOf("fsfreeze-hook freeze") < log.indexOf("fsfreeze-hook thaw"), "freeze, then thaw, in the guest's log");
  await host.run(VM, "echo B > /mnt/data/after && sync && echo wrote-after", /wrote-after/);

  from = (await host.consoleText(VM)).length;
  await host.ok(["checkpoint", "apply", VM, "production"]);
  await waitReadyFrom(from);
  assert.notEqual(await bootId(), id0, "applying a Production checkpoint boots the guest cold");
  const ls = await host.run(VM, "d=$(awk '$3 == 65536 { print $4 }' /proc/partitions | tail -1); mkdir -p /mnt/data; mount -t ext2 /dev/$d /mnt/data; echo files:$(ls /mnt/data | tr '\\n' ' '):end", /files:.*:end/, 60_000);
  const files = /files:(.*):end/.exec(ls.slice(ls.lastIndexOf("files:")))![1]!;
  assert.match(files, /\bbefore\b/);
  assert.doesNotMatch(files, /\bafter\b/);
});

test("a tree with a branch; removing the middle checkpoint while running leaves every other one applying with its data; images check clean", { timeout: 600_000 }, async () => {
  // production -> mid (marker m) -> leaf (marker l); then back to production -> branch (marker b).
  const mark = async (m: string) => host.run(VM, `echo ${m} > /mnt/data/mark && sync && echo marked-${m}`, new RegExp(`marked-${m}`));
  await mark("m");
  await host.ok(["checkpoint", VM, "--name", "mid"]);
  await mark("l");
  await host.ok(["checkpoint", VM, "--name", "leaf"]);
  let from = (await host.consoleText(VM)).length;
  await host.ok(["checkpoint", "apply", VM, "production"]);
  await waitReadyFrom(from);
  await host.run(VM, "d=$(awk '$3 == 65536 { print $4 }' /proc/partitions | tail -1); mkdir -p /mnt/data; mount -t ext2 /dev/$d /mnt/data && echo remounted", /remounted/, 60_000);
  await mark("b");
  await host.ok(["checkpoint", VM, "--name", "branch"]);
  let tree = await host.json<CpList>(["checkpoint", "list", VM]);
  const byName = (n: string) => tree.checkpoints.find((c) => c.name === n)!;
  assert.equal(byName("mid").parentId, byName("production").id);
  assert.equal(byName("leaf").parentId, byName("mid").id);
  assert.equal(byName("branch").parentId, byName("production").id);

  await host.ok(["checkpoint", "remove", VM, "mid"]);
  tree = await host.json<CpList>(["checkpoint", "list", VM]);
  assert.equal(byName("leaf").parentId, byName("production").id, "the removed checkpoint's child hangs below its parent");
  assert.ok(!tree.checkpoints.some((c) => c.name === "mid"));

  for (const [cp, expected] of [["leaf", "l"], ["branch", "b"], ["production", "nomark"]] as const) {
    from = (await host.consoleText(VM)).length;
    await host.ok(["checkpoint", "apply", VM, cp]);
    await waitReadyFrom(from);
    const out = await host.run(VM, `d=$(awk '$3 == 65536 { print $4 }' /proc/partitions | tail -1); mkdir -p /mnt/data; mount -t ext2 /dev/$d /mnt/data; echo mark-of-${cp}:$(cat /mnt/data/mark 2>/dev/null || echo nomark):end`, new RegExp(`mark-of-${cp}:\\w+:end`), 60_000);
    assert.match(out.slice(out.lastIndexOf(`mark-of-${cp}`)), new RegExp(`mark-of-${cp}:${expected}:end`));
  }

  // The checkpoint Now hangs below, removed while the guest runs: QEMU commits the active image
  // into it and pivots (a live block-commit); the guest keeps running with its data.
  await mark("live");
  await host.ok(["checkpoint", VM, "--name", "under-now"]);
  await mark("after");
  const id = await bootId();
  await host.ok(["checkpoint", "remove", VM, "under-now"]);
  assert.equal(await host.state(VM), "Running");
  assert.equal(await bootId(), id);
  const after = await host.run(VM, "sync; echo 3 > /proc/sys/vm/drop_caches; echo now-mark:$(cat /mnt/data/mark):end", /now-mark:\w+:end/);
  assert.match(after.slice(after.lastIndexOf("now-mark:")), /now-mark:after:end/);
  const shown = await host.json<{ disks: { ref: string; path: string }[] }>(["show", VM]);
  const afterRemoval = await host.json<CpList>(["checkpoint", "list", VM]);
  assert.equal(afterRemoval.current, afterRemoval.checkpoints.find((c) => c.name === "production")!.id, "Now hangs below the removed checkpoint's parent");
  assert.ok(shown.disks.length >= 2);

  await host.ok(["turn-off", VM]);
  const home = await host.json<{ id: string }>(["show", VM]);
  const { stdout } = await execFileP("find", [host.home, "-name", "*.qcow2", "-path", `*${home.id}*`]);
  const images = stdout.trim().split("\n").filter(Boolean);
  assert.ok(images.length >= 4, images.join("\n"));
  for (const img of images) {
    const r = await execFileP("qemu-img", ["check", "-f", "qcow2", img]);
    assert.match(r.stdout, /No errors were found/, img);
  }
});

test("removing an adapter leaves the other adapter's firmware path (and PCI slot) unchanged", { timeout: 120_000 }, async () => {
  await host.ok(["nic", "add", VM]);
  const before = await host.json<FirmwareGet & { nics?: unknown }>(["firmware", "get", VM]);
  const pathOf = (f: FirmwareGet, mac: string) => f.bootOrder.filter((e) => e.firmwarePath.includes(mac)).map((e) => e.firmwarePath);
  const nics = (await host.json<{ nics: { name: string; macAddress: string; pciSlot: number }[] }>(["show", VM])).nics;
  assert.equal(nics.length, 2);
  const second = nics[1]!;
  const mac = second.macAddress.replaceAll(":", "");
  const pathBefore = pathOf(before, mac);
  assert.ok(pathBefore.length > 0);
  await host.ok(["nic", "remove", VM, nics[0]!.name]);
  const after = await host.json<FirmwareGet>(["firmware", "get", VM]);
  assert.deepEqual(pathOf(after, mac), pathBefore);
  const left = (await host.json<{ nics: { name: string; pciSlot: number }[] }>(["show", VM])).nics;
  assert.deepEqual(left.map((n) => [n.name, n.pciSlot]), [[second.name, second.pciSlot]]);
});

test("at most 50 checkpoints: the 51st is refused by rule; removing one by one merges everything back", { timeout: 600_000 }, async () => {
  await host.ok(["new", "many", "--generation", "1", "--new-disk", "16M:qcow2"]);
  for (let i = 1; i <= 50; i++) await host.ok(["checkpoint", "many", "--name", `cp${i}`]);
  const r = await host.cli(["checkpoint", "many", "--name", "cp51"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /rule checkpoint-limit/);
  const list = await host.json<CpList>(["checkpoint", "list", "many"]);
  assert.equal(list.checkpoints.length, 50);
  await host.ok(["checkpoint", "remove", "many", "cp1", "--subtree"]);
  assert.equal((await host.json<CpList>(["checkpoint", "list", "many"])).checkpoints.length, 0);
  const disk = (await host.json<{ disks: { path: string }[] }>(["show", "many"])).disks[0]!.path;
  const r2 = await execFileP("qemu-img", ["check", "-f", "qcow2", disk]);
  assert.match(r2.stdout, /No errors were found/);
});
