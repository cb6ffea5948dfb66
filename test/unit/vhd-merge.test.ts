import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { diskIdentity, findDiskConflict } from "../../src/images/identity.js";
import { checkVhd, getVhd, mergeVhd, newVhd, type InUseCheck } from "../../src/images/vhd.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

async function qemuIo(driver: string, path: string, ...cmds: string[]): Promise<void> {
  await run("qemu-io", ["-f", driver, ...cmds.flatMap((c) => ["-c", c]), path]);
}

describe("merge", () => {
  let dir: string;
  const opts = () => ({ allowedDirs: [dir] });
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "vmhost-merge-test-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function pair(name: string, parentFormat: "qcow2" | "vhdx", childSize?: number): Promise<{ parent: string; child: string }> {
    const parent = join(dir, `${name}-parent.${parentFormat}`);
    await newVhd({ path: parent, sizeBytes: 16 * MiB }, opts());
    await qemuIo(parentFormat, parent, "write -P 0x11 0 4M");
    const child = join(dir, `${name}-child.qcow2`);
    await newVhd({ path: child, parent: { path: parent }, ...(childSize ? { sizeBytes: childSize } : {}) }, opts());
    await qemuIo("qcow2", child, "write -P 0x22 1M 1M", "write -P 0x33 8M 2M");
    return { parent, child };
  }

  it("writes the child's changes into its parent and removes the child, with progress", async () => {
    const { parent, child } = await pair("a", "qcow2");
    const seen: number[] = [];
    const r = await mergeVhd(child, {}, { ...opts(), onProgress: (f) => seen.push(f) });
    assert.equal(r.childAfter, "removed");
    assert.equal(r.child, child);
    assert.equal(r.parent.path, parent);
    assert.ok(!(await readdir(dir)).includes("a-child.qcow2"));
    await qemuIo("qcow2", parent, "read -P 0x11 0 1M", "read -P 0x22 1M 1M", "read -P 0x11 2M 2M", "read -P 0x33 8M 2M");
    assert.equal((await checkVhd(parent, opts())).clean, true);
    assert.equal(seen.at(-1), 1);
    for (let i = 1; i < seen.length; i++) assert.ok((seen[i] ?? 0) > (seen[i - 1] ?? 0));
  });

  it("with keepChild leaves an empty differencing disk on the parent, reading the same", async () => {
    const { parent, child } = await pair("b", "vhdx");
    const r = await mergeVhd(child, { keepChild: true }, opts());
    assert.equal(r.childAfter, "emptied");
    const c = await getVhd(child, opts());
    assert.equal(c.parentPath, parent);
    assert.equal(c.vhdType, "Differencing");
    const { stdout: map } = await run("qemu-img", ["map", "--output=json", "-f", "qcow2", child]);
    const own = (JSON.parse(map) as { depth: number; data: boolean }[]).filter((e) => e.depth === 0 && e.data);
    assert.deepEqual(own, [], "the child holds no data of its own");
    await run("qemu-img", ["compare", "-f", "qcow2", "-F", "vhdx", child, parent]);
    await qemuIo("vhdx", parent, "read -P 0x22 1M 1M", "read -P 0x33 8M 2M");
    assert.equal((await checkVhd(parent, opts())).clean, true);
  });

  it("grows a qcow2 parent for a larger child; refuses a vhdx parent QEMU cannot grow", async () => {
    const q = await pair("c", "qcow2", 24 * MiB);
    await qemuIo("qcow2", q.child, "write -P 0x44 20M 1M");
    const r = await mergeVhd(q.child, {}, opts());
    assert.equal(r.parent.size, 24 * MiB);
    await qemuIo("qcow2", q.parent, "read -P 0x44 20M 1M");

    const v = await pair("d", "vhdx", 24 * MiB);
    await assert.rejects(mergeVhd(v.child, {}, opts()), /is larger than its vhdx parent .* and QEMU cannot grow a vhdx/);
    assert.ok((await readdir(dir)).includes("d-child.qcow2"));
  });

  it("refuses a disk without a parent, and a parent another running VM's disk reads", async () => {
    const lone = join(dir, "lone.qcow2");
    await newVhd({ path: lone, sizeBytes: MiB }, opts());
    await assert.rejects(mergeVhd(lone, {}, opts()), /lone\.qcow2 is not a differencing disk/);

    const { parent, child } = await pair("e", "qcow2");
    const sibling = join(dir, "e-sibling.qcow2");
    await newVhd({ path: sibling, parent: { path: parent } }, opts());
    const running = [{ owner: "other", disk: await diskIdentity(sibling, undefined, opts()) }];
    const inUse: InUseCheck = (disk, access) => {
      const c = findDiskConflict(disk, running, access);
      return c ? { vm: c.owner } : undefined;
    };
    await assert.rejects(mergeVhd(child, {}, { ...opts(), inUse }), /e-parent\.qcow2 is in use by VM "other": .* before merging a child into it/);
    await qemuIo("qcow2", parent, "read -P 0x11 0 4M");
    await assert.rejects(mergeVhd(child, {}, { ...opts(), inUse: { vm: "mine" } }), /e-child\.qcow2 is in use by VM "mine"/);
  });
});
