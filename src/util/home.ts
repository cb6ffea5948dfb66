import { createHash } from "node:crypto";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";

/** Where vmhost keeps everything: $VMHOST_HOME, else /var/lib/vmhost for root, else ~/.local/share/vmhost. */
export function vmhostHome(): string {
  const env = process.env["VMHOST_HOME"];
  if (env && env.length > 0) return env;
  if (process.getuid?.() === 0) return "/var/lib/vmhost";
  return join(homedir(), ".local", "share", "vmhost");
}

/** Unix socket paths are limited to 107 bytes; long homes get a short run directory in tmp. */
const SOCKET_PATH_BUDGET = 107 - 40;

export interface HomeLayout {
  home: string;
  vmsDir: string;
  runDir: string;
  hostDir: string;
  serviceSocket: string;
  servicePidFile: string;
  serviceLog: string;
}

export function homeLayout(home = vmhostHome()): HomeLayout {
  const preferredRun = join(home, "run");
  const runDir =
    Buffer.byteLength(preferredRun) <= SOCKET_PATH_BUDGET
      ? preferredRun
      : join(tmpdir(), `vmhost-${createHash("sha256").update(home).digest("hex").slice(0, 12)}`);
  return {
    home,
    vmsDir: join(home, "vms"),
    runDir,
    hostDir: join(home, "host"),
    serviceSocket: join(runDir, "vmhostd.sock"),
    servicePidFile: join(runDir, "vmhostd.pid"),
    serviceLog: join(home, "vmhostd.log"),
  };
}
