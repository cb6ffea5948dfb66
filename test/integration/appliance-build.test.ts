// The appliance cache under concurrency and failure: two processes build once, a build killed
// half-way leaves nothing that looks complete, a damaged build is rebuilt, the cached path is fast.
// Each test uses a fresh cache directory; the .debs are linked from the default cache when present.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { link, mkdir, mkdtemp, readdir, rm, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultApplianceCacheDir, ensureAppliance } from "../../src/images/appliance/index.js";

const BUILD_TIMEOUT_MS = 10 * 60_000;
const indexModule = new URL("../../src/images/appliance/index.js", import.meta.url).href;
let root: string;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "vmhost-appliance-cache-"));
});
after(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

async function freshCache(name: string): Promise<string> {
  const dir = join(root, name);
  await mkdir(join(dir, "debs"), { recursive: true });
  const shared = join(defaultApplianceCacheDir(), "debs");
  for (const f of await readdir(shared).catch(() => [] as string[])) {
    if (f.endsWith(".deb")) await link(join(shared, f), join(dir, "debs", f)).catch(() => undefined);
  }
  return dir;
}

interface Child {
  lines: string[];
  exited: Promise<number | null>;
  kill: () => void;
  waitForLine: (re: RegExp) => Promise<void>;
}

/** A separate node process running ensureAppliance on `cacheDir`, logging each line to stdout. */
function ensureInChild(cacheDir: string, tag: string): Child {
  const code = `const { ensureAppliance } = await import(${JSON.stringify(indexModule)});
const a = await ensureAppliance({ cacheDir: ${JSON.stringify(cacheDir)}, log: (l) => console.log("log: " + l) });
console.log("result: " + JSON.stringify({ dir: a.dir, id: a.manifest.id }));`;
  const proc = spawn(process.execPath, ["--input-type=module", "-e", code], { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  const waiters: (() => void)[] = [];
  let buf = "";
  proc.stdout.on("data", (b: Buffer) => {
    buf += b.toString();
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      lines.push(`${tag} ${buf.slice(0, i)}`);
      buf = buf.slice(i + 1);
      waiters.forEach((w) => w());
    }
  });
  let stderr = "";
  proc.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((res) =>
    proc.on("exit", (c) => {
      if (c !== 0 && stderr) lines.push(`${tag} stderr: ${stderr}`);
      waiters.forEach((w) => w());
      res(c);
    }),
  );
  return {
    lines,
    exited,
    kill: () => proc.kill("SIGKILL"),
    waitForLine: (re) =>
      new Promise((resolve, reject) => {
        const check = () => {
          if (lines.some((l) => re.test(l))) resolve();
          else if (proc.exitCode !== null || proc.signalCode !== null) reject(new Error(`child exited before ${re}:\n${lines.join("\n")}`));
          else return false;
          return true;
        };
        if (!check()) waiters.push(check);
      }),
  };
}

function result(c: Child): { dir: string; id: string } {
  const l = c.lines.find((x) => / result: /.test(x));
  assert.ok(l, c.lines.join("\n"));
  return JSON.parse(l.slice(l.indexOf("result: ") + 8)) as { dir: string; id: string };
}

test("two processes at once: one builds, the other waits and uses the result; then the cached path is fast", { timeout: BUILD_TIMEOUT_MS }, async (t) => {
  const cache = await freshCache("concurrent");
  const t0 = Date.now();
  const a = ensureInChild(cache, "[a]");
  const b = ensureInChild(cache, "[b]");
  assert.deepEqual(await Promise.all([a.exited, b.exited]), [0, 0], [...a.lines, ...b.lines].join("\n"));
  t.diagnostic(`cold build (debs already local) took ${Date.now() - t0} ms`);
  const all = [...a.lines, ...b.lines];
  assert.equal(all.filter((l) => /building appliance/.test(l)).length, 1, all.join("\n"));
  assert.deepEqual(result(a), result(b));

  const t1 = Date.now();
  const cached = await ensureAppliance({ cacheDir: cache });
  const ms = Date.now() - t1;
  t.diagnostic(`cached ensureAppliance took ${ms} ms`);
  assert.ok(ms < 1000, `cached path took ${ms} ms`);
  assert.equal(cached.dir, result(a).dir);
  const left = await readdir(cache);
  assert.deepEqual(left.filter((f) => f.startsWith(".")), [], "no lock or temporary directories left");
});

test("a build killed half-way leaves nothing that looks complete; the next call cleans up and builds", { timeout: BUILD_TIMEOUT_MS }, async () => {
  const cache = await freshCache("killed");
  const c = ensureInChild(cache, "[k]");
  await c.waitForLine(/unpacked packages/);
  c.kill();
  await c.exited;
  const after = await readdir(cache);
  assert.deepEqual(after.filter((f) => /^[0-9a-f]{12}$/.test(f)), [], `no appliance directory after the kill: ${after.join(" ")}`);
  assert.ok(after.includes(".build.lock"), "the dead builder's lock is still there");
  assert.ok(after.some((f) => f.startsWith(".build-")), "the dead builder's work directory is still there");

  const lines: string[] = [];
  const a = await ensureAppliance({ cacheDir: cache, log: (l) => lines.push(l) });
  assert.ok(lines.some((l) => /stale lock/.test(l)), lines.join("\n"));
  assert.ok(existsSync(a.gen1Disk) && existsSync(a.gen2Disk));
  assert.deepEqual((await readdir(cache)).filter((f) => f.startsWith(".")), []);
});

test("a damaged build (a disk missing) is rebuilt, not returned", { timeout: BUILD_TIMEOUT_MS }, async () => {
  const cache = await freshCache("damaged");
  const first = await ensureAppliance({ cacheDir: cache });
  await unlink(first.gen2Disk);
  const lines: string[] = [];
  const second = await ensureAppliance({ cacheDir: cache, log: (l) => lines.push(l) });
  assert.ok(lines.some((l) => /missing gen2\.raw/.test(l)), lines.join("\n"));
  assert.equal(second.manifest.id, first.manifest.id);
  assert.ok(existsSync(second.gen2Disk));
});
