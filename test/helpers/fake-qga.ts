import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";

/**
 * A stand-in for qemu-ga on the host end of a virtio-serial port, for unit tests of the agent
 * client and the session: it speaks the same newline-JSON protocol (guest-sync-delimited with
 * its 0xFF sentinel, ids echoed), keeps an in-memory file system for guest-file-*, and runs a
 * few known shell snippets for guest-exec. Behaviour can be bent to test the hostile cases.
 */

type Cmd = { execute: string; arguments?: Record<string, unknown>; id?: unknown };
type Reply = { return: unknown } | { error: { class: string; desc: string } } | undefined;

export class FakeQga {
  readonly files = new Map<string, Buffer>();
  readonly dirs = new Set<string>(["/", "/tmp", "/var", "/var/lib", "/var/lib/hyperv"]);
  readonly received: Cmd[] = [];
  readonly syncIds: number[] = [];
  /**
   * While true, commands are received but neither carried out nor answered (an agent stopped
   * with SIGSTOP); resume() carries them out and answers them in order.
   */
  paused = false;
  private held: { c: Socket; cmd: Cmd }[] = [];
  /** Lines sent before every reply (stale output the client must skip). */
  noiseBeforeReply: string[] = [];
  /** Replace a command's reply (return undefined to stay silent). */
  override?: (cmd: Cmd) => Reply | "default";
  frozen = false;
  freezeCount = 1;
  guestTimeOffsetMs = 0;
  timeSets: number[] = [];
  execs: string[][] = [];
  shutdowns = 0;
  private handles = new Map<number, { path: string; pos: number; mode: string }>();
  private nextHandle = 1000;
  private nextPid = 100;
  private execResults = new Map<number, { exitcode: number; out: string }>();
  private conns = new Set<Socket>();
  private server?: Server;
  private dir = "";
  socketPath = "";

  static async start(): Promise<FakeQga> {
    const f = new FakeQga();
    f.dir = await mkdtemp(join(tmpdir(), "fake-qga-"));
    f.socketPath = join(f.dir, "agent.sock");
    f.server = createServer((c) => f.onConn(c));
    await new Promise<void>((r) => f.server!.listen(f.socketPath, r));
    return f;
  }

  async stop(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => this.server?.close(() => r()));
    await rm(this.dir, { recursive: true, force: true });
  }

  /** Close every client connection (QEMU's chardev going away). */
  dropClients(): void {
    for (const c of this.conns) c.destroy();
  }

  resume(): void {
    this.paused = false;
    const held = this.held;
    this.held = [];
    for (const { c, cmd } of held) if (!c.destroyed) this.answer(c, cmd);
  }

  /**
   * qemu-ga restarted inside the guest after hanging: what it had received but not carried out
   * is lost, the channel stays (QEMU holds it), and the file systems stay as they were.
   */
  restartAgent(): void {
    this.held = [];
    this.paused = false;
  }

  send(raw: string | Buffer): void {
    for (const c of this.conns) c.write(raw);
  }

  private onConn(c: Socket): void {
    this.conns.add(c);
    c.on("close", () => this.conns.delete(c));
    c.on("error", () => undefined);
    let buf = Buffer.alloc(0);
    c.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const s = buf.lastIndexOf(0xff);
      if (s >= 0) buf = buf.subarray(s + 1);
      let nl: number;
      while ((nl = buf.indexOf(0x0a)) >= 0) {
        const line = buf.subarray(0, nl).toString("utf8");
        buf = buf.subarray(nl + 1);
        if (!line.trim()) continue;
        let cmd: Cmd;
        try {
          cmd = JSON.parse(line) as Cmd;
        } catch {
          continue;
        }
        this.received.push(cmd);
        if (this.paused) this.held.push({ c, cmd });
        else this.answer(c, cmd);
      }
    });
  }

  private answer(c: Socket, cmd: Cmd): void {
    let reply: Reply;
    const o = this.override?.(cmd);
    if (o !== undefined && o !== "default") reply = o;
    else if (o === undefined && this.override) reply = undefined;
    else reply = this.handle(cmd);
    if (reply === undefined) return;
    const body: Record<string, unknown> = { ...reply };
    if (cmd.id !== undefined) body["id"] = cmd.id;
    const out = Buffer.from(this.noiseBeforeReply.map((l) => l + "\n").join("") + JSON.stringify(body) + "\n", "utf8");
    const bytes = cmd.execute === "guest-sync-delimited" ? Buffer.concat([Buffer.from([0xff]), out]) : out;
    c.write(bytes);
  }

  private err(desc: string, cls = "GenericError"): Reply {
    return { error: { class: cls, desc } };
  }

  private handle(cmd: Cmd): Reply {
    const a = cmd.arguments ?? {};
    // qemu-ga's ga_freeze_allowlist (qga/main.c): everything else is disabled while frozen,
    // refused with QMP's "has been disabled" error and listed as enabled: false by guest-info.
    const frozenAllowed = ["guest-sync-delimited", "guest-sync", "guest-ping", "guest-info", "guest-fsfreeze-status", "guest-fsfreeze-thaw"];
    if (this.frozen && !frozenAllowed.includes(cmd.execute)) return this.err(`Command ${cmd.execute} has been disabled: the agent is in frozen state`, "CommandNotFound");
    switch (cmd.execute) {
      case "guest-sync-delimited":
        this.syncIds.push(a["id"] as number);
        return { return: a["id"] };
      case "guest-ping":
        return { return: {} };
      case "guest-info":
        return {
          return: {
            version: "7.2.99",
            supported_commands: [
              "guest-ping", "guest-info", "guest-sync-delimited", "guest-shutdown", "guest-get-time", "guest-set-time", "guest-file-open", "guest-file-read",
              "guest-file-write", "guest-file-close", "guest-file-seek", "guest-file-flush", "guest-exec", "guest-exec-status", "guest-fsfreeze-freeze",
              "guest-fsfreeze-thaw", "guest-fsfreeze-status", "guest-get-osinfo", "guest-get-host-name", "guest-network-get-interfaces",
            ].map((name) => ({ name, enabled: !this.frozen || frozenAllowed.includes(name), "success-response": true })),
          },
        };
      case "guest-get-osinfo":
        return { return: { name: "Fake Linux", "version-id": "12", "kernel-release": "6.1.0-9-amd64", machine: "x86_64", id: "fake" } };
      case "guest-get-host-name":
        return { return: { "host-name": "fakehost" } };
      case "guest-network-get-interfaces":
        return {
          return: [
            { name: "lo", "ip-addresses": [{ "ip-address-type": "ipv4", "ip-address": "127.0.0.1", prefix: 8 }, { "ip-address-type": "ipv6", "ip-address": "::1", prefix: 128 }] },
            { name: "eth0", "ip-addresses": [{ "ip-address-type": "ipv4", "ip-address": "10.0.2.15", prefix: 24 }, { "ip-address-type": "ipv6", "ip-address": "fec0::5054:ff:fe12:3456", prefix: 64 }] },
          ],
        };
      case "guest-get-time":
        return { return: Math.round((Date.now() + this.guestTimeOffsetMs) * 1e6) };
      case "guest-set-time":
        this.timeSets.push(Number(a["time"]));
        this.guestTimeOffsetMs = Number(a["time"]) / 1e6 - Date.now();
        return { return: {} };
      case "guest-shutdown":
        this.shutdowns++;
        return undefined;
      case "guest-fsfreeze-status":
        return { return: this.frozen ? "frozen" : "thawed" };
      case "guest-fsfreeze-freeze":
        this.frozen = true;
        return { return: this.freezeCount };
      case "guest-fsfreeze-thaw": {
        const n = this.frozen ? this.freezeCount : 0;
        this.frozen = false;
        return { return: n };
      }
      case "guest-file-open": {
        const path = String(a["path"]);
        const mode = String(a["mode"] ?? "r");
        if (this.dirs.has(path)) {
          if (mode !== "r") return this.err(`failed to open file '${path}' (mode: '${mode}'): Is a directory`);
          const h = this.nextHandle++;
          this.handles.set(h, { path, pos: 0, mode: "dir" });
          return { return: h };
        }
        if (!this.dirs.has(posix.dirname(path))) return this.err(`failed to open file '${path}' (mode: '${mode}'): No such file or directory`);
        if (mode.startsWith("r") && !this.files.has(path)) return this.err(`failed to open file '${path}' (mode: '${mode}'): No such file or directory`);
        if (mode.startsWith("w")) this.files.set(path, Buffer.alloc(0));
        const h = this.nextHandle++;
        this.handles.set(h, { path, pos: 0, mode });
        return { return: h };
      }
      case "guest-file-read": {
        const h = this.handles.get(Number(a["handle"]));
        if (!h) return this.err("handle not found");
        if (h.mode === "dir") return this.err("failed to read file: Is a directory");
        const data = this.files.get(h.path) ?? Buffer.alloc(0);
        const part = data.subarray(h.pos, h.pos + Number(a["count"] ?? 4096));
        h.pos += part.length;
        return { return: { count: part.length, "buf-b64": part.toString("base64"), eof: h.pos >= data.length } };
      }
      case "guest-file-write": {
        const h = this.handles.get(Number(a["handle"]));
        if (!h) return this.err("handle not found");
        const part = Buffer.from(String(a["buf-b64"]), "base64");
        const data = this.files.get(h.path) ?? Buffer.alloc(0);
        const next = Buffer.concat([data.subarray(0, h.pos), part, data.subarray(h.pos + part.length)]);
        this.files.set(h.path, next);
        h.pos += part.length;
        return { return: { count: part.length, eof: false } };
      }
      case "guest-file-seek": {
        const h = this.handles.get(Number(a["handle"]));
        if (!h) return this.err("handle not found");
        h.pos = (this.files.get(h.path)?.length ?? 0) + Number(a["offset"] ?? 0);
        return { return: { position: h.pos, eof: true } };
      }
      case "guest-file-flush":
        return { return: {} };
      case "guest-file-close":
        this.handles.delete(Number(a["handle"]));
        return { return: {} };
      case "guest-exec":
        return this.exec(String(a["path"]), (a["arg"] as string[]) ?? []);
      case "guest-exec-status": {
        const r = this.execResults.get(Number(a["pid"]));
        if (!r) return this.err("pid not found");
        return { return: { exited: true, exitcode: r.exitcode, "out-data": Buffer.from(r.out).toString("base64") } };
      }
      default:
        return this.err(`The command ${cmd.execute} has not been found`, "CommandNotFound");
    }
  }

  /** The shell snippets vmhost runs, recognised by their $0 name. */
  private exec(path: string, args: string[]): Reply {
    this.execs.push([path, ...args]);
    const pid = this.nextPid++;
    let exitcode = 0;
    let out = "";
    const name = args[2];
    const p1 = args[3] ?? "";
    const p2 = args[4] ?? "";
    const script = args[1] ?? "";
    if (name === "vmhost-copy" && script.includes("mkdir -p")) {
      for (let d = p1; d !== "/"; d = posix.dirname(d)) this.dirs.add(d);
    } else if (name === "vmhost-copy" && script.includes("sha256sum")) {
      const f = this.files.get(p1);
      if (!f) exitcode = 1;
      else out = `${createHash("sha256").update(f).digest("hex")}  ${p1}\n`;
    } else if (name === "vmhost-copy" && script.includes("mv -f")) {
      const f = this.files.get(p1);
      if (!f) exitcode = 1;
      else {
        this.files.set(p2, f);
        this.files.delete(p1);
      }
    } else if (name === "vmhost-copy" && script.includes("rm -f")) {
      this.files.delete(p1);
    } else if (script.includes("command -v fsfreeze")) {
      out = "ok\n";
    } else if (name === "vmhost-kvp") {
      this.dirs.add(p1);
    }
    this.execResults.set(pid, { exitcode, out });
    return { return: { pid } };
  }
}
