import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, open, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { BackingChainError, walkBackingChain } from "../../src/images/chain.js";
import { ImageFormatMismatchError } from "../../src/images/format.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

async function qemuImg(...args: string[]): Promise<void> {
  await run("qemu-img", args);
}

/**
 * Older QEMU wrote overlays without recording the backing file's format, and 7.2 refuses to: make one
 * by renaming the "backing file format name" header extension (type 0xE2792ACA, QEMU
 * docs/interop/qcow2.txt) to a type QEMU does not know and skips.
 */
async function forgetBackingFormat(path: string): Promise<void> {
  const buf = await readFile(path);
  const at = buf.subarray(0, 4096).indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]));
  assert.ok(at > 0, "backing format extension found");
  const fh = await open(path, "r+");
  await fh.write(Buffer.from([0x6d, 0x6d, 0x6d, 0x6d]), 0, 4, at);
  await fh.close();
}

function refused(image: string, member: string, reason: RegExp) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof BackingChainError, `a BackingChainError, got ${String(e)}`);
    assert.equal(e.code, "backing-chain-refused");
    assert.equal(e.image, image);
    assert.equal(e.member, member);
    assert.match(e.reason, reason);
    assert.ok(e.message.includes(image), "the message names the image");
    return true;
  };
}

describe("walkBackingChain", () => {
  let root: string;
  let home: string;
  let outside: string;
  let shadow: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "vmhost-chain-test-"));
    home = join(root, "home");
    outside = join(root, "etc");
    await mkdir(home);
    await mkdir(outside);
    // Stands in for a host file such as /etc/shadow.
    shadow = join(outside, "shadow");
    await writeFile(shadow, "root:$6$secret:19000:0:99999:7:::\n".padEnd(64 * 1024, "\n"));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("returns every member with its recorded format, size and identity", async () => {
    const base = join(home, "base.vhdx");
    const mid = join(home, "mid.qcow2");
    const top = join(home, "top.qcow2");
    await qemuImg("create", "-q", "-f", "vhdx", base, "16M");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "vhdx", "-b", base, mid);
    // A relative backing name: QEMU takes it relative to the overlay.
    await run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "mid.qcow2", "top.qcow2"], { cwd: home });
    const chain = await walkBackingChain(top, undefined, { allowedDirs: [home] });
    assert.deepEqual(
      chain.map((m) => [m.path, m.format, m.vhdType]),
      [
        [top, "qcow2", "Differencing"],
        [mid, "qcow2", "Differencing"],
        [base, "vhdx", "Dynamic"],
      ],
    );
    assert.equal(chain[0]?.backingFile, mid);
    assert.equal(chain[1]?.backingFormat, "vhdx");
    assert.ok(chain.every((m) => m.virtualSize === 16 * MiB));
    assert.equal(new Set(chain.map((m) => `${m.file.dev}:${m.file.ino}`)).size, 3);
  });

  it("refuses a .img holding a qcow2 header whose backing file is a host file", async () => {
    const evil = join(home, "evil.img");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "raw", "-b", shadow, evil, "8M");
    // Under its extension it is raw, and raw must carry no qcow2 header.
    await assert.rejects(walkBackingChain(evil, undefined, { allowedDirs: [home] }), (e: unknown) => e instanceof ImageFormatMismatchError && e.holds === "qcow2");
    // Declared qcow2, its backing file lies outside what vmhost keeps.
    await assert.rejects(walkBackingChain(evil, "qcow2", { allowedDirs: [home] }), refused(evil, shadow, /lies outside the directories vmhost keeps disks in/));
    // The same chain is fine where the host file's folder is allowed: the refusal is about the place.
    const ok = await walkBackingChain(evil, "qcow2", { allowedDirs: [home, outside] });
    assert.equal(ok[1]?.path, shadow);
  });

  it("resolves symlinks before judging the place", async () => {
    const link = join(home, "innocent.img");
    await symlink(shadow, link);
    const overlay = join(home, "via-link.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "raw", "-b", link, overlay, "8M");
    await assert.rejects(walkBackingChain(overlay, undefined, { allowedDirs: [home] }), refused(overlay, link, /lies outside .* \(it resolves to .*etc\/shadow\)/));
  });

  it("refuses a backing file whose format the image does not record", async () => {
    const base = join(home, "plain-base.img");
    await qemuImg("create", "-q", "-f", "raw", base, "8M");
    const overlay = join(home, "noformat.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay);
    await forgetBackingFormat(overlay);
    const { stdout } = await run("qemu-img", ["info", "--output=json", "-f", "qcow2", overlay]);
    assert.equal(JSON.parse(stdout)["backing-filename-format"], undefined, "the test image records no backing format");
    await assert.rejects(walkBackingChain(overlay, undefined, { allowedDirs: [home] }), refused(overlay, overlay, /without recording its format, so QEMU would guess it/));
  });

  it("refuses a backing file that is not a regular file, or is missing", async () => {
    const folder = join(home, "folder");
    await mkdir(folder);
    const overlay = join(home, "on-folder.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", folder, overlay, "8M");
    await assert.rejects(walkBackingChain(overlay, undefined, { allowedDirs: [home] }), refused(overlay, folder, /is not a regular file/));
    const gone = join(home, "gone.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", join(home, "never-made.img"), gone, "8M");
    await assert.rejects(walkBackingChain(gone, undefined, { allowedDirs: [home] }), refused(gone, join(home, "never-made.img"), /does not exist/));
  });

  it("refuses a backing file whose content disagrees with its recorded format", async () => {
    const real = join(home, "really-qcow2.img");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "raw", "-b", shadow, real, "8M");
    const overlay = join(home, "on-disguised.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", real, overlay, "8M");
    await assert.rejects(walkBackingChain(overlay, undefined, { allowedDirs: [home] }), refused(overlay, real, /fails the format check .* declared raw, but it holds a qcow2 header/));
  });

  it("refuses a qcow2 image with an external data file", async () => {
    const data = join(outside, "data.raw");
    await qemuImg("create", "-q", "-f", "raw", data, "1M");
    const img = join(home, "external.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-o", `data_file=${data},data_file_raw=on`, img, "1M");
    await assert.rejects(walkBackingChain(img, undefined, { allowedDirs: [home, outside] }), refused(img, img, /keeps its data in an external file/));
  });

  it("refuses loops and chains deeper than the limit", async () => {
    const a = join(home, "loop-a.qcow2");
    const b = join(home, "loop-b.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", a, "8M");
    await qemuImg("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", a, b);
    await qemuImg("rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", b, a);
    await assert.rejects(walkBackingChain(a, undefined, { allowedDirs: [home] }), refused(a, a, /appears twice in the chain/));

    let prev = join(home, "d0.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", prev, "8M");
    for (let i = 1; i <= 3; i++) {
      const next = join(home, `d${i}.qcow2`);
      await qemuImg("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", prev, next);
      prev = next;
    }
    assert.equal((await walkBackingChain(prev, undefined, { allowedDirs: [home], maxDepth: 4 })).length, 4);
    await assert.rejects(walkBackingChain(prev, undefined, { allowedDirs: [home], maxDepth: 3 }), refused(prev, join(home, "d0.qcow2"), /more than 3 images deep/));
  });

  it("holds the image itself to the allowed directories only when asked", async () => {
    const img = join(outside, "elsewhere.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", img, "8M");
    assert.equal((await walkBackingChain(img, undefined, { allowedDirs: [home] })).length, 1);
    await assert.rejects(walkBackingChain(img, undefined, { allowedDirs: [home], imageMustBeAllowed: true }), refused(img, img, /lies outside/));
    await copyFile(img, join(home, "copy.qcow2"));
    assert.equal((await walkBackingChain(join(home, "copy.qcow2"), undefined, { allowedDirs: [home], imageMustBeAllowed: true })).length, 1);
  });
});
