import { execFile } from "node:child_process";
import { readFile, readlink } from "node:fs/promises";
import type { Socket } from "node:net";

/**
 * Who is at the other end of an accepted unix socket connection, for the audit log: node has no
 * SO_PEERCRED, so the socket's inode (from /proc/self/fd) is looked up in `ss -xp` (iproute2,
 * sock_diag's UNIX_DIAG_PEER): the peer's socket line names the client's pid, whose
 * /proc/PID/status gives its uid. About 35 ms, so it is done once per connection and only when
 * a change is audited. Access itself is the socket's mode and group (0660 vmhost), not this.
 * A peer in another network namespace (ss lists only its own) comes out as "local (unix socket)".
 */
export async function unixPeer(socket: Socket): Promise<{ uid?: number; pid?: number; user?: string }> {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return {};
  const link = await readlink(`/proc/self/fd/${fd}`).catch(() => "");
  const ino = /^socket:\[(\d+)\]$/.exec(link)?.[1];
  if (!ino) return {};
  const out = await new Promise<string>((resolve) =>
    execFile("ss", ["-xpnH"], { maxBuffer: 16 * 1024 * 1024, timeout: 5000 }, (err, stdout) => resolve(err ? "" : stdout)),
  );
  for (const line of out.split("\n")) {
    const cols = line.trim().split(/\s+/);
    // u_str ESTAB recvq sendq LOCAL LOCAL_INO PEER PEER_INO users:((...))
    if (cols[7] !== ino) continue;
    const pid = Number(/pid=(\d+)/.exec(line)?.[1]);
    if (!pid) continue;
    const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
    const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
    if (!Number.isFinite(uid)) return { pid };
    return { pid, uid, user: await userName(uid) };
  }
  return {};
}

async function userName(uid: number): Promise<string | undefined> {
  const passwd = await readFile("/etc/passwd", "utf8").catch(() => "");
  for (const l of passwd.split("\n")) {
    const f = l.split(":");
    if (Number(f[2]) === uid && f[0]) return f[0];
  }
  return undefined;
}
