import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { encodePool } from "../../src/guest/kvp.js";
import { defaultApplianceCacheDir } from "../../src/images/appliance/index.js";
import { BOOT_TIMEOUT_MS, READY, TestHost, VMHOST, sleep, typeInto } from "../helpers/harness.js";

/**
 * Integration services through the guest agent, all in ONE appliance VM (boots are slow under
 * TCG): heartbeat (OK, Lost Communication with the agent stopped in the guest, OK again), KVP in
 * hv_kvp_daemon's pool files both ways and the intrinsic items, copy-file of 10 MiB, freeze and
 * thaw (including vmhostd killed while frozen), time correction after a long pause, events
 * --follow, a guest reboot, and stop through the agent. Steps run in order.
 */

const run = promisify(execFile);
let host: TestHost;
let work: string;
const VM = "a";

interface Service {
  name: string;
  enabled: boolean;
  primaryStatus: string;
  detail: string;
}
interface Ev {
  at: string;
  type: string;
  message: string;
  data?: Record<string, unknown>;
}

async function services(): Promise<Service[]> {
  return (await host.json<{ services: Service[] }>(["integration", "list", VM])).services;
}

async function heartbeat(): Promise<Service> {
  return (await services()).find((s) => s.name === "Heartbeat")!;
}

async function waitHeartbeat(status: string, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  let last = "";
  while (Date.now() - t0 < timeoutMs) {
    const hb = await heartbeat();
    last = `${hb.primaryStatus} (${hb.detail})`;
    if (hb.primaryStatus === status) return Date.now() - t0;
    await sleep(1000);
  }
  throw new Error(`Heartbeat stayed ${last}, not ${status}, for ${timeoutMs} ms`);
}

async function events(): Promise<Ev[]> {
  return host.json<Ev[]>(["events", VM]);
}

/** Waits for an event among those after the first `since` ones. */
async function waitEvent(pred: (e: Ev) => boolean, timeoutMs: number, what: string, since = 0): Promise<Ev> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = (await events()).slice(since).find(pred);
    if (e) return e;
    if (Date.now() > deadline) throw new Error(`no ${what} event within ${timeoutMs} ms`);
    await sleep(1000);
  }
}

/** The output of a guest shell command; `marker` is printed last (computed, so the echoed command never matches it). */
async function guest(cmd: string, timeoutMs = 60_000): Promise<string> {
  const n = Math.floor(Math.random() * 1e6);
  const text = await host.run(VM, `${cmd}; echo "end-$((${n}+1))"`, new RegExp(`end-${n + 1}`), timeoutMs);
  return text;
}

before(async () => {
  host = await TestHost.create();
  work = await mkdtemp(join(tmpdir(), "vmhost-is-"));
});
after(async () => {
  await host.cleanup();
  await rm(work, { recursive: true, force: true });
});

test("the appliance boots and `integration list --json` shows the six services with Heartbeat OK", { timeout: BOOT_TIMEOUT_MS + 120_000 }, async () => {
  await host.ok(["new", VM, "--generation", "2", "--appliance", "--memory", "512M"]);
  await host.ok(["start", VM]);
  await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS);
  const ms = await waitHeartbeat("OK", 60_000);
  console.log(`heartbeat OK ${ms} ms after the ready line`);
  const list = await services();
  assert.deepEqual(
    list.map((s) => [s.name, s.enabled]),
    [
      ["Guest Service Interface", false],
      ["Heartbeat", true],
      ["Key-Value Pair Exchange", true],
      ["Shutdown", true],
      ["Time Synchronization", true],
      ["VSS", true],
    ],
  );
  assert.ok(list.every((s) => s.primaryStatus === "OK"), JSON.stringify(list));
  assert.match(list[1]!.detail, /^OK, \d+ s ago$/);
  const show = await host.ok(["show", VM]);
  assert.match(show, /Heartbeat:\s+OK, \d+ s ago/);
  const listed = await host.json<{ name: string; heartbeat?: string }[]>(["list"]);
  assert.match(listed.find((v) => v.name === VM)?.heartbeat ?? "", /^OK, \d+ s ago$/);
  assert.match(await host.ok(["list"]), /Heartbeat[\s\S]*OK, \d+ s ago/);
  assert.ok((await events()).some((e) => e.type === "agent-contact"));
});

test("intrinsic KVP items are present, under Hyper-V's names, and plausible", { timeout: 120_000 }, async () => {
  // DHCP in the guest may still be running right after boot.
  let intr: Record<string, string> = {};
  for (let i = 0; i < 30; i++) {
    intr = (await host.json<{ intrinsic: Record<string, string> }>(["kvp", "get", VM, "--pool", "intrinsic"])).intrinsic;
    if (intr["NetworkAddressIPv4"]) break;
    await sleep(1000);
  }
  console.log(JSON.stringify(intr));
  for (const k of [
    "FullyQualifiedDomainName",
    "OSName",
    "OSVersion",
    "OSMajorVersion",
    "OSMinorVersion",
    "OSBuildNumber",
    "ProcessorArchitecture",
    "NetworkAddressIPv4",
    "NetworkAddressIPv6",
    "IntegrationServicesVersion",
  ]) {
    assert.ok(k in intr, `${k} is present`);
  }
  const shown = await host.json<{ appliance: { kernel: string } }>(["show", VM]);
  assert.equal(intr["OSName"], "vmhost appliance", "os-release NAME");
  assert.equal(intr["OSBuildNumber"], shown.appliance.kernel, "the kernel release");
  assert.equal(intr["OSVersion"], shown.appliance.kernel.split("-")[0]);
  assert.equal(intr["ProcessorArchitecture"], "x86_64");
  assert.equal(intr["FullyQualifiedDomainName"], "appliance");
  assert.match(intr["IntegrationServicesVersion"]!, /^\d+\.\d+/);
  assert.match(intr["NetworkAddressIPv4"]!, /^10\.0\.2\.\d+/, "the Default Switch's DHCP address");
  assert.doesNotMatch(intr["NetworkAddressIPv4"]!, /127\.0\.0\.1/);
});

test("a key set on the host lands in the guest's .kvp_pool_0 byte for byte as hv_kvp_daemon lays it out", { timeout: 120_000 }, async () => {
  const out = await host.ok(["kvp", "set", VM, "Color", "blue"]);
  assert.match(out, /Color set \(in the guest's external pool\)/);
  const expected = createHash("sha256").update(encodePool([{ key: "Color", value: "blue" }])).digest("hex");
  const text = await guest(
    "f=/var/lib/hyperv/.kvp_pool_0; ls -l $f; wc -c < $f; od -An -tx1 -N 8 $f; od -An -tx1 -j 512 -N 8 $f; od -An -tx1 -j 2552 -N 8 $f; sha256sum $f",
  );
  assert.match(text, /^-rw-r--r--\s/m, "0644, as hv_kvp_daemon creates its pools");
  assert.match(text, /^\s*2560\s*$/m, "one 2560-byte record");
  assert.match(text, /43 6f 6c 6f 72 00 00 00/, "the key at offset 0, NUL padded");
  assert.match(text, /62 6c 75 65 00 00 00 00/, "the value at offset 512, NUL padded");
  assert.match(text, /00 00 00 00 00 00 00 00/);
  assert.ok(text.includes(expected), "the whole file is exactly the record hv_kvp_daemon would have written");
  const ext = await host.json<{ external: Record<string, string> }>(["kvp", "get", VM, "--pool", "external"]);
  assert.deepEqual(ext.external, { Color: "blue" });
});

test("an entry the guest writes into its pool (.kvp_pool_1) is read on the host", { timeout: 120_000 }, async () => {
  // A 2560-byte record made with the guest's own tools: key "GuestKey", value "from-the-guest".
  await guest(
    "f=/var/lib/hyperv/.kvp_pool_1; { printf GuestKey; dd if=/dev/zero bs=504 count=1; printf from-the-guest; dd if=/dev/zero bs=2034 count=1; } 2>/dev/null >$f; wc -c <$f",
  );
  const pools = await host.json<{ guest: Record<string, string> }>(["kvp", "get", VM, "--pool", "guest"]);
  assert.deepEqual(pools.guest, { GuestKey: "from-the-guest" });
  await waitEvent((e) => e.type === "kvp-guest-changed" && JSON.stringify(e.data).includes("GuestKey"), 30_000, "kvp-guest-changed");
});

test("KVP limits and encodings are enforced; remove empties the pool", { timeout: 60_000 }, async () => {
  const long = await host.cli(["kvp", "set", VM, "k".repeat(512), "v"]);
  assert.notEqual(long.code, 0);
  assert.match(long.stderr, /at most 511/);
  const big = await host.cli(["kvp", "set", VM, "k", "é".repeat(1024)]); // 2048 bytes
  assert.notEqual(big.code, 0);
  assert.match(big.stderr, /2048 bytes/);
  await host.ok(["kvp", "set", VM, "Size", "XL"]);
  await host.ok(["kvp", "remove", VM, "Size"]);
  const text = await guest("wc -c < /var/lib/hyperv/.kvp_pool_0");
  assert.match(text, /^\s*2560\s*$/m, "only Color is left");
  const missing = await host.cli(["kvp", "remove", VM, "Nope"]);
  assert.notEqual(missing.code, 0);
});

test("events --follow streams new events as they happen", { timeout: 60_000 }, async () => {
  const child = spawn(process.execPath, [VMHOST, "events", VM, "--follow", "--json"], { env: host.env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  try {
    const deadline = Date.now() + 15_000;
    while (!out.includes('"type":"kvp-set"') && Date.now() < deadline) await sleep(200); // the backlog came
    await host.ok(["kvp", "set", VM, "Followed", "yes"]);
    while (!out.includes("Followed") && Date.now() < deadline + 15_000) await sleep(200);
    const lines = out.trim().split("\n").map((l) => JSON.parse(l) as Ev);
    assert.ok(lines.some((e) => e.type === "kvp-set" && e.data?.["key"] === "Followed"), "the new event arrived on the open stream");
  } finally {
    child.kill();
  }
  await host.ok(["kvp", "remove", VM, "Followed"]);
});

test("heartbeat: Lost Communication when the agent is stopped in the guest, then OK again", { timeout: 180_000 }, async () => {
  await guest("kill -STOP $(pidof qemu-ga)");
  const lostAfter = await waitHeartbeat("Lost Communication", 90_000);
  console.log(`Lost Communication ${lostAfter} ms after the agent was stopped`);
  assert.match((await heartbeat()).detail, /^Lost Communication, last beat \d+ s ago/);
  assert.match(await host.ok(["show", VM]), /Heartbeat:\s+Lost Communication/);
  await guest("kill -CONT $(pidof qemu-ga)");
  await waitHeartbeat("OK", 60_000);
  const evs = await events();
  const lost = evs.findIndex((e) => e.type === "heartbeat-lost");
  const back = evs.findIndex((e) => e.type === "heartbeat-restored");
  assert.ok(lost >= 0 && back > lost, "heartbeat lost, then back, in the journal");
  // The answers the stopped agent owed arrived late; none was taken for a newer call.
  const intr = await host.json<{ intrinsic: Record<string, string> }>(["kvp", "get", VM, "--pool", "intrinsic"]);
  assert.equal(intr.intrinsic["ProcessorArchitecture"], "x86_64");
});

test("copy-file: refused while Guest Service Interface is off; a 10 MiB file arrives with the same hash", { timeout: 240_000 }, async () => {
  const src = join(work, "payload.bin");
  const data = randomBytes(10 * 1024 * 1024);
  await writeFile(src, data);
  const sha = createHash("sha256").update(data).digest("hex");
  const off = await host.cli(["copy-file", VM, src, "/tmp/x"]);
  assert.notEqual(off.code, 0);
  assert.match(off.stderr, /Guest Service Interface integration service is disabled/);
  await host.ok(["integration", "enable", VM, "Guest Service Interface"]);
  const noDir = await host.cli(["copy-file", VM, src, "/tmp/deep/dir/x"]);
  assert.notEqual(noDir.code, 0);
  assert.match(noDir.stderr, /--create-full-path/);
  const t0 = Date.now();
  const out = await host.ok(["copy-file", VM, src, "/tmp/deep/dir/x", "--create-full-path"], 200_000);
  console.log(`10 MiB copied in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${out.trim()}`);
  assert.match(out, /verified/);
  assert.ok(out.includes(sha));
  const text = await guest("sha256sum /tmp/deep/dir/x; wc -c < /tmp/deep/dir/x; ls -a /tmp/deep/dir");
  assert.ok(text.includes(`${sha}  /tmp/deep/dir/x`), "the guest computes the same SHA-256");
  assert.match(text, /^\s*10485760\s*$/m);
  assert.doesNotMatch(text, /\.partial/, "no temporary file is left");
  const again = await host.cli(["copy-file", VM, src, "/tmp/deep/dir/x"]);
  assert.match(again.stderr, /already exists.*--force/);
  assert.ok((await events()).some((e) => e.type === "file-copied" && e.data?.["sha256"] === sha));
});

/**
 * ext4 (which mounts ext2) from the guest kernel's own package, loaded with insmod: the package
 * the appliance was built from (in its cache), else fetched with apt-get download.
 */
async function guestExt4Modules(release: string): Promise<string[]> {
  let deb: string | undefined;
  const cached = join(defaultApplianceCacheDir(), "debs");
  const name = (await readdir(cached).catch(() => [] as string[])).find((d) => d.startsWith(`linux-image-${release}_`) && d.endsWith(".deb"));
  if (name) deb = join(cached, name);
  else {
    const dl = join(work, "deb");
    await run("sh", ["-c", 'mkdir -p "$1" && cd "$1" && apt-get download -q "$2" >/dev/null', "download", dl, `linux-image-${release}`]);
    deb = join(dl, (await readdir(dl)).find((d) => d.endsWith(".deb"))!);
  }
  const dir = join(work, "modules");
  const root = `./lib/modules/${release}/kernel`;
  const wanted = ["fs/ext4/ext4.ko", "fs/jbd2/jbd2.ko", "fs/mbcache.ko", "lib/crc16.ko", "crypto/crc32c_generic.ko"].map((m) => `${root}/${m}`);
  await run("sh", ["-c", 'd=$1 deb=$2; shift 2; mkdir -p "$d" && dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$d" "$@"', "extract", dir, deb, ...wanted]);
  // Dependencies first; ext4 wants crc32c from the crypto API when it mounts.
  const order = ["lib/crc16.ko", "fs/mbcache.ko", "fs/jbd2/jbd2.ko", "crypto/crc32c_generic.ko", "fs/ext4/ext4.ko"];
  const ext4 = await readFile(join(dir, root, "fs/ext4/ext4.ko"));
  const dep = /depends=([^\0]*)/.exec(ext4.toString("latin1"))?.[1] ?? "";
  for (const d of dep.split(",").filter(Boolean)) assert.ok(order.some((o) => o.endsWith(`/${d}.ko`)), `ext4 needs ${d}, which is loaded`);
  return order.map((m) => join(dir, root, m));
}

test("VSS: freeze and thaw, honest about what the appliance can freeze; a frozen ext2 blocks writes until the thaw", { timeout: 300_000 }, async () => {
  // The appliance's root is the initramfs (rootfs/tmpfs): qemu-ga finds nothing it can freeze there.
  const plain = await host.json<{ frozen: number }>(["vss", "freeze", VM, "--timeout", "30"]);
  console.log(`appliance as built: qemu-ga froze ${plain.frozen} file system(s)`);
  await host.ok(["vss", "thaw", VM]);

  // A freezable file system: ext2 on a hot-added disk, ext4 driver loaded from the guest kernel's package.
  const hasExt = /\bext2\b/.test(await guest("cat /proc/filesystems"));
  if (!hasExt) {
    const release = (await host.json<{ appliance: { kernel: string } }>(["show", VM])).appliance.kernel;
    const mods = await guestExt4Modules(release);
    for (const m of mods) await host.ok(["copy-file", VM, m, `/tmp/mods/${m.split("/").pop()}`, "--create-full-path", "--force"]);
    const loaded = await guest(`for m in ${mods.map((m) => m.split("/").pop()).join(" ")}; do insmod /tmp/mods/$m || echo "insmod-fa""iled-$m"; done; grep -c ext2 /proc/filesystems`);
    assert.doesNotMatch(loaded, /insmod-failed-/);
  }
  await host.ok(["disk", "add", VM, "--new", "64M:raw"]);
  const mounted = await guest(
    'sleep 1; d=$(awk \'$3 == 65536 { print $4 }\' /proc/partitions | tail -1); mke2fs -q /dev/$d >/dev/null 2>&1 || mke2fs /dev/$d; mkdir -p /mnt/data; mount -t ext2 /dev/$d /mnt/data && grep " /mnt/data " /proc/mounts',
    60_000,
  );
  assert.match(mounted, /\/mnt\/data ext2/);

  const r = await host.json<{ frozen: number; thawBy: string }>(["vss", "freeze", VM, "--timeout", "60"]);
  assert.ok(r.frozen >= 1, `qemu-ga froze ${r.frozen} file system(s)`);
  assert.equal((await host.json<{ status: string }>(["vss", "status", VM])).status, "frozen");
  const from = (await host.consoleText(VM)).length;
  await typeInto(await host.serialSocket(VM), '(echo x > /mnt/data/f; echo "wrote-$((20+1))") &\n');
  await sleep(3000);
  assert.ok(!(await host.consoleText(VM)).slice(from).includes("wrote-21"), "a write to the frozen file system waits");
  const t = await host.json<{ thawed: number }>(["vss", "thaw", VM]);
  assert.ok(t.thawed >= 1);
  await host.waitConsole(VM, "wrote-21", 30_000, from);
  const evs = await events();
  assert.ok(evs.some((e) => e.type === "vss-frozen") && evs.some((e) => e.type === "vss-thawed"));
});

test("VSS thaw safety: vmhostd's own timer thaws a forgotten freeze", { timeout: 60_000 }, async () => {
  await host.ok(["vss", "freeze", VM, "--timeout", "3"]);
  await sleep(6000);
  assert.equal((await host.json<{ status: string }>(["vss", "status", VM])).status, "thawed");
  assert.ok((await events()).some((e) => e.type === "vss-thaw-forced"));
});

test("VSS thaw safety: the freezer (vmhostd) is killed while frozen; the guest watchdog thaws in bounded time", { timeout: 180_000 }, async () => {
  await host.ok(["vss", "freeze", VM, "--timeout", "10"]);
  const frozenAt = Date.now();
  const pid = await host.servicePid();
  process.kill(pid, "SIGKILL");
  const from = (await host.consoleText(VM)).length;
  // No vmhost command until the guest has thawed itself (a new vmhostd would thaw it on contact).
  const sock = (await readdir(join(host.home, "run"), { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => join(host.home, "run", d.name, "serial.sock"));
  await typeInto(sock[0]!, '(echo y > /mnt/data/g; echo "wrote-$((30+1))") &\n');
  // The blocked write finishes the moment the watchdog's FITHAW lands, before or after its message.
  await host.waitConsole(VM, "wrote-31", 60_000, from);
  const waited = (Date.now() - frozenAt) / 1000;
  const text = await host.waitConsole(VM, "vmhost-vss-watchdog: thawed /mnt/data", 10_000, from);
  console.log(`the guest thawed itself ${waited.toFixed(1)} s after the freeze (limit 10 s + 5 s margin)`);
  assert.ok(waited >= 9, "not thawed early");
  assert.ok(waited < 40, "thawed within the bound");
  assert.match(text, /wrote-31/);
  // The next vmhostd adopts the VM, finds qemu-ga still in its frozen state, and thaws it.
  await waitHeartbeat("OK", 60_000);
  await waitEvent((e) => e.type === "vss-thawed" && e.data?.["reason"] === "left-frozen", 30_000, "left-frozen thaw");
  assert.equal((await host.json<{ status: string }>(["vss", "status", VM])).status, "thawed");
  await guest("echo z > /mnt/data/h && sync");
});

test("time: after a long pause the guest clock is set from the host, and the correction is an event", { timeout: 120_000 }, async () => {
  const since = (await events()).length;
  await host.ok(["pause", VM]);
  await sleep(15_000);
  await host.ok(["resume", VM]);
  const ev = await waitEvent((e) => e.type === "time-corrected" && e.data?.["reason"] === "resume", 30_000, "time-corrected", since);
  console.log(`resume correction: ${ev.message} ${JSON.stringify(ev.data)}`);
  assert.ok(Number(ev.data?.["driftMs"]) < -10_000, "the guest clock stood still while paused");
  const text = await guest('echo "now=$(date +%s)"');
  const g = Number(/now=(\d{9,})/.exec(text)?.[1]);
  assert.ok(Math.abs(g - Date.now() / 1000) < 3, `guest ${g} vs host ${Math.round(Date.now() / 1000)}`);
});

test("after a guest reboot the agent is reached again and the host's KVP items are delivered again", { timeout: BOOT_TIMEOUT_MS + 120_000 }, async () => {
  const from = (await host.consoleText(VM)).length;
  const since = (await events()).length;
  await host.ok(["restart", VM]);
  await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS, from);
  await waitHeartbeat("OK", 90_000);
  await waitEvent((e) => e.type === "kvp-delivered", 60_000, "kvp-delivered", since);
  const expected = createHash("sha256").update(encodePool([{ key: "Color", value: "blue" }])).digest("hex");
  assert.ok((await guest("sha256sum /var/lib/hyperv/.kvp_pool_0")).includes(expected));
});

test("stop goes through the guest agent (Shutdown service) and reaches Off", { timeout: 120_000 }, async () => {
  const from = (await host.consoleText(VM)).length;
  await host.ok(["stop", VM, "--timeout", "60"]);
  const show = await host.json<{ state: string; lastExit: { reason: string } }>(["show", VM]);
  assert.equal(show.state, "Off");
  assert.equal(show.lastExit.reason, "the guest shut down");
  const stop = (await events()).filter((e) => e.type === "stop").at(-1)!;
  assert.equal(stop.data?.["method"], "agent");
  assert.match((await host.consoleText(VM)).slice(from), /vmhost-appliance: shutdown -h -P \+0/);
  const list = await services();
  assert.ok(list.every((s) => s.primaryStatus === ""), "no status while Off");
});
