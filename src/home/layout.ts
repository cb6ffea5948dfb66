import { createHash } from "node:crypto";
import { lstat, mkdir } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { VmhostError } from "../util/errors.js";

/**
 * Where vmhost keeps everything for one host: `$VMHOST_HOME`, else /var/lib/vmhost for root,
 * else ~/.local/share/vmhost. Every other path of vmhost's is derived from this one.
 */
export function vmhostHome(): string {
  const env = process.env["VMHOST_HOME"];
  if (env && env.length > 0) return env;
  if (process.getuid?.() === 0) return "/var/lib/vmhost";
  return join(homedir(), ".local", "share", "vmhost");
}

/**
 * Unix socket paths hold at most 107 bytes (sun_path, unix(7)); a VM's sockets sit two levels
 * under the run directory (`<run>/<13-char id prefix>/serial.sock`), so the run directory gets
 * what is left after 40 bytes.
 */
const SOCKET_PATH_BUDGET = 107 - 40;

/** The host-wide paths of one vmhost home. VM paths are `VmHome`'s (vm-home.ts). */
export interface HostLayout {
  home: string;
  /** One folder per VM, named by the VM's id (vm-home.ts). */
  vmsDir: string;
  /** Host state: MAC pool, accelerator probe, trust store, layout version. */
  hostDir: string;
  /** Disks vmhost creates (`new --new-disk`, `disk add --new`, appliance overlays). */
  disksDir: string;
  /** Appliance bases linked into this home, so overlays never dangle when a cache is cleared. */
  applianceDir: string;
  /** Sockets and pid files; private to the service's user (ensurePrivateDir). */
  runDir: string;
  serviceSocket: string;
  /** The file whose kernel lock makes one vmhostd per home (lock.ts). */
  serviceLock: string;
  serviceLog: string;
  /** The layout version stamp (migrate.ts). */
  layoutFile: string;
  /** Host-level events (a VM moved away, whose own journal went with it). */
  hostEvents: string;
  /** Where files of migrations into this host wait until the VM is made (`.incoming-<migration id>`). */
  incomingDir: string;
}

/**
 * The run directory: `$VMHOST_HOME/run` when socket paths fit, else a directory of the service
 * user's own: `/run/vmhost/<hash>` for root, `$XDG_RUNTIME_DIR/vmhost-<hash>` for others. Never a
 * shared, guessable directory in /tmp (another user could make it first and serve a fake
 * vmhostd there). Throws when no private place exists.
 */
export function runDirFor(home: string, env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  const preferred = join(home, "run");
  if (Buffer.byteLength(preferred) <= SOCKET_PATH_BUDGET) return preferred;
  const hash = createHash("sha256").update(home).digest("hex").slice(0, 12);
  if (uid === 0) return join("/run/vmhost", hash);
  const xdg = env["XDG_RUNTIME_DIR"];
  if (xdg && Buffer.byteLength(xdg) + 20 <= SOCKET_PATH_BUDGET) return join(xdg, `vmhost-${hash}`);
  throw new VmhostError(
    "home-path-too-long",
    `VMHOST_HOME ${home} is too long for unix socket paths (${Buffer.byteLength(preferred)} bytes with "/run"; at most ${SOCKET_PATH_BUDGET}) and there is no XDG_RUNTIME_DIR: use a shorter VMHOST_HOME`,
  );
}

export function hostLayout(home = vmhostHome()): HostLayout {
  const runDir = runDirFor(home);
  return {
    home,
    vmsDir: join(home, "vms"),
    hostDir: join(home, "host"),
    disksDir: join(home, "disks"),
    applianceDir: join(home, "appliance"),
    runDir,
    serviceSocket: join(runDir, "vmhostd.sock"),
    serviceLock: join(home, "host", "vmhostd.lock"),
    serviceLog: join(home, "vmhostd.log"),
    layoutFile: join(home, "host", "layout.json"),
    hostEvents: join(home, "host", "events.jsonl"),
    incomingDir: join(home, "incoming"),
  };
}

/**
 * Makes (or checks) a directory only its owner may use: a real directory, not a link, owned by
 * this process's user, mode 0700 (or `mode` when given, e.g. 0710 for a group that may reach a
 * socket inside). Anything else is refused, naming what is wrong, and left as it is.
 */
export async function ensurePrivateDir(dir: string, mode = 0o700): Promise<void> {
  await mkdir(dir, { recursive: true, mode });
  const st = await lstat(dir);
  const uid = process.geteuid?.() ?? 0;
  const problems: string[] = [];
  if (st.isSymbolicLink()) problems.push("it is a symbolic link");
  else if (!st.isDirectory()) problems.push("it is not a directory");
  if (st.uid !== uid) problems.push(`it is owned by uid ${st.uid}, not ${uid}`);
  if ((st.mode & 0o777) !== mode) problems.push(`its mode is ${(st.mode & 0o777).toString(8).padStart(4, "0")}, not ${mode.toString(8).padStart(4, "0")}`);
  if (problems.length) {
    throw new VmhostError("unsafe-directory", `refusing to use ${dir}: ${problems.join("; ")}. Remove it (or fix it) and try again`, 500);
  }
}
