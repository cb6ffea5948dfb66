import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { link, mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { diskIdentity, findDiskConflict, type DiskIdentity } from "../../src/images/identity.js";

const run = promisify(execFile);

async function qemuImg(...args: string[]): Promise<void> {
  await run("qemu-img", args);
}

describe("disk identity and conflicts, on real files", () => {
  let home: string;
  const policy = () => ({ allowedDirs: [home] });
  let web: DiskIdentity;
  let db: DiskIdentity;
  before(async () => {
    home = await mkdtemp(join(tmpdir(), "vmhost-identity-test-"));
    await qemuImg("create", "-q", "-f", "qcow2", join(home, "web.qcow2"), "8M");
    await qemuImg("create", "-q", "-f", "vhdx", join(home, "base.vhdx"), "8M");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "vhdx", "-b", join(home, "base.vhdx"), join(home, "db.qcow2"));
    web = await diskIdentity(join(home, "web.qcow2"), undefined, policy());
    db = await diskIdentity(join(home, "db.qcow2"), undefined, policy());
  });
  after(async () => {
    await rm(home, { recursive: true, force: true });
  });

  it("an identity lists the image and its chain by device and inode", () => {
    assert.equal(web.members.length, 1);
    assert.deepEqual(
      db.members.map((m) => m.path),
      [join(home, "db.qcow2"), join(home, "base.vhdx")],
    );
    assert.equal(typeof db.members[0]?.file.ino, "bigint");
  });

  it("the same file under a hard link is the same disk", async () => {
    const alias = join(home, "web-alias.qcow2");
    await link(join(home, "web.qcow2"), alias);
    const cand = await diskIdentity(alias, undefined, policy());
    const c = findDiskConflict(cand, [
      { owner: "db", disk: db },
      { owner: "web", disk: web },
    ]);
    assert.ok(c);
    assert.equal(c.owner, "web");
    assert.equal(c.relation, "same-file");
    assert.match(c.message, /web-alias\.qcow2 is in use by VM "web" as its disk .*web\.qcow2 \(the same file as .*web-alias\.qcow2\)/);
    // And under a symlink.
    const sl = join(home, "web-symlink.qcow2");
    await symlink(join(home, "web.qcow2"), sl);
    assert.equal(findDiskConflict(await diskIdentity(sl, undefined, policy()), [{ owner: "web", disk: web }])?.relation, "same-file");
  });

  it("an overlay on another VM's disk conflicts with it, in both directions", async () => {
    const overlay = join(home, "peek.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", join(home, "web.qcow2"), overlay);
    const cand = await diskIdentity(overlay, undefined, policy());
    const c = findDiskConflict(cand, [{ owner: "web", disk: web }]);
    assert.equal(c?.relation, "candidate-backed-by-owner-disk");
    assert.match(c?.message ?? "", /peek\.qcow2 reads .*web\.qcow2 as its backing file, but that file is VM "web"'s disk/);
    // Reading it (a convert) conflicts too: web writes that file.
    assert.equal(findDiskConflict(cand, [{ owner: "web", disk: web }], "read")?.owner, "web");

    // db's disk is an overlay on base.vhdx: attaching base.vhdx to another VM would write under db.
    const base = await diskIdentity(join(home, "base.vhdx"), undefined, policy());
    const b = findDiskConflict(base, [{ owner: "db", disk: db }]);
    assert.equal(b?.relation, "owner-backed-by-candidate");
    assert.equal(b?.ownerDisk, join(home, "db.qcow2"));
    assert.match(b?.message ?? "", /base\.vhdx is the backing file .*base\.vhdx of VM "db"'s disk .*db\.qcow2; writing it would corrupt that disk/);
    // Reading base.vhdx while db runs is fine (db only reads it too); writing it is not.
    assert.equal(findDiskConflict(base, [{ owner: "db", disk: db }], "read"), undefined);
    assert.equal(findDiskConflict(base, [{ owner: "db", disk: db }], "write")?.owner, "db");
  });

  it("two overlays on one shared base do not conflict", async () => {
    const other = join(home, "db2.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "vhdx", "-b", join(home, "base.vhdx"), other);
    const cand = await diskIdentity(other, undefined, policy());
    assert.equal(findDiskConflict(cand, [{ owner: "db", disk: db }, { owner: "web", disk: web }]), undefined);
  });

  it("distinct files never conflict, even with equal content", async () => {
    await run("cp", [join(home, "web.qcow2"), join(home, "web-copy.qcow2")]);
    const cand = await diskIdentity(join(home, "web-copy.qcow2"), undefined, policy());
    assert.equal(findDiskConflict(cand, [{ owner: "web", disk: web }, { owner: "db", disk: db }]), undefined);
  });
});
