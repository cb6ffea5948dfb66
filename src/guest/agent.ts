import { randomBytes, randomInt } from "node:crypto";
import { EventEmitter } from "node:events";
import { createConnection, type Socket } from "node:net";
import { z } from "zod";

/**
 * A client of the QEMU guest agent (qemu-ga) on the host end of its virtio-serial port:
 * newline-delimited JSON over QEMU's unix socket. QEMU's chardev takes one client, so each
 * running VM has exactly one GuestAgent, held by its session in vmhostd.
 *
 * Everything the guest sends is untrusted: replies are matched to the request that is
 * waiting for them (stale replies after a timeout are discarded), lines are bounded in size,
 * and every reply is validated with a zod schema before anyone uses it.
 */

export class GuestAgentError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`${command}: the guest agent answered: ${desc}`);
    this.name = "GuestAgentError";
  }
}

/** No usable answer: timeout, no connection, or a reply that is not what the command returns. */
export class GuestAgentUnavailable extends Error {
  constructor(
    readonly command: string,
    readonly reason: "timeout" | "disconnected" | "protocol" | "closed" | "busy",
    message: string,
  ) {
    super(`${command}: ${message}`);
    this.name = "GuestAgentUnavailable";
  }
}

export interface GuestAgentOptions {
  /** Longest reply line accepted; longer ones are discarded and fail the waiting call. */
  maxLineBytes?: number;
  /** Timeout of the guest-sync handshake. */
  syncTimeoutMs?: number;
  /** Timeout of a command when the caller gives none. */
  defaultTimeoutMs?: number;
  /** Reconnect backoff bounds (after the socket closes or a connect fails). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Calls queued at most; more are refused, so a stuck guest cannot grow the queue without bound. */
  maxQueued?: number;
}

export interface CallOptions {
  timeoutMs?: number;
  /**
   * Commands that do not answer on success (guest-shutdown, guest-suspend-*): an error
   * reply within the timeout fails the call; silence means it was accepted.
   */
  noReplyOnSuccess?: boolean;
}

/** The part of the agent the services use; a narrow interface so they can be tested with a fake. */
export interface AgentCaller {
  call<S extends z.ZodTypeAny>(command: string, args: Record<string, unknown> | undefined, schema: S, opts?: CallOptions): Promise<z.output<S>>;
}

const DEFAULTS: Required<GuestAgentOptions> = {
  maxLineBytes: 8 * 1024 * 1024,
  syncTimeoutMs: 5_000,
  defaultTimeoutMs: 10_000,
  minBackoffMs: 250,
  maxBackoffMs: 5_000,
  maxQueued: 64,
};

/** Bytes written but not taken by QEMU beyond which no more requests are sent. */
const MAX_UNSENT = 64 * 1024;
const SENTINEL = 0xff;
const NEWLINE = 0x0a;

interface Waiter {
  /** Returns true when the message is the awaited reply (and settles the waiter). */
  offer(msg: Record<string, unknown>): boolean;
  fail(err: Error): void;
}

/** Guest text in error messages: bounded and without control characters. */
export function guestText(s: unknown, max = 300): string {
  const t = typeof s === "string" ? s : JSON.stringify(s) ?? String(s);
  // eslint-disable-next-line no-control-regex
  const clean = t.replace(/[\u0000-\u001f\u007f-\u009f]/g, " ");
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

export class GuestAgent extends EventEmitter implements AgentCaller {
  private readonly o: Required<GuestAgentOptions>;
  private sock?: Socket;
  private connecting?: Promise<Socket>;
  private chunks: Buffer[] = [];
  private pendingBytes = 0;
  /** Discarding an oversized line until its newline. */
  private skipping = false;
  private synced = false;
  private waiter?: Waiter;
  private tail: Promise<unknown> = Promise.resolve();
  private queued = 0;
  private closed = false;
  private nextConnectAt = 0;
  private backoffMs: number;
  private seq = 0;
  private readonly prefix = randomBytes(4).toString("hex");
  /** When the agent last answered anything we asked (ms since epoch). */
  lastReplyAt?: number;
  /** Successful guest-sync handshakes since this client was made. */
  syncs = 0;

  constructor(
    readonly socketPath: string,
    opts: GuestAgentOptions = {},
  ) {
    super();
    this.o = { ...DEFAULTS, ...opts };
    this.backoffMs = this.o.minBackoffMs;
  }

  get isSynced(): boolean {
    return this.synced;
  }

  /**
   * Run one command. Calls are serialised (qemu-ga answers one at a time); the handshake runs
   * first whenever the stream may hold stale data (new connection, or a call that timed out).
   *
   * The timeout (opts.timeoutMs, else defaultTimeoutMs; 2 s for noReplyOnSuccess) is a deadline
   * counted from when the call is made, queue wait included: behind a silent agent, each queued
   * call fails at its own deadline instead of after every call ahead of it has timed out in turn
   * (64 queued 10 s calls used to take 64 x 10 s). A call whose deadline passes while it waits is
   * never sent. The handshake and the command share what is left of the deadline; only the
   * silence window of a noReplyOnSuccess command is counted from its sending, because a window
   * cut short would take a refusal that comes late for an acceptance.
   * Rejects with GuestAgentUnavailable (timeout, disconnected, protocol, closed, busy) or
   * GuestAgentError (the agent answered with an error).
   */
  call<S extends z.ZodTypeAny>(command: string, args: Record<string, unknown> | undefined, schema: S, opts: CallOptions = {}): Promise<z.output<S>> {
    if (this.closed) return Promise.reject(new GuestAgentUnavailable(command, "closed", "the guest agent session is closed"));
    if (this.queued >= this.o.maxQueued) {
      return Promise.reject(new GuestAgentUnavailable(command, "busy", `${this.queued} guest agent calls are already waiting`));
    }
    const timeoutMs = opts.timeoutMs ?? (opts.noReplyOnSuccess ? 2000 : this.o.defaultTimeoutMs);
    const deadline = Date.now() + timeoutMs;
    this.queued++;
    return new Promise<z.output<S>>((resolve, reject) => {
      let state: "queued" | "running" | "expired" = "queued";
      const expiry = setTimeout(() => {
        if (state !== "queued") return;
        state = "expired";
        this.queued--;
        reject(new GuestAgentUnavailable(command, "timeout", `no answer from the guest agent within ${timeoutMs} ms (the call waited behind earlier ones and was never sent)`));
      }, timeoutMs);
      const run = async (): Promise<void> => {
        if (state !== "queued") return; // expired while queued: already rejected
        state = "running";
        clearTimeout(expiry);
        try {
          resolve(await this.runCall(command, args, schema, opts, timeoutMs, deadline));
        } catch (err) {
          reject(err);
        } finally {
          this.queued--;
        }
      };
      this.tail = this.tail.then(run, run);
    });
  }

  /** One call at the head of the queue; `deadline` is ms since the epoch. */
  private async runCall<S extends z.ZodTypeAny>(
    command: string,
    args: Record<string, unknown> | undefined,
    schema: S,
    opts: CallOptions,
    timeoutMs: number,
    deadline: number,
  ): Promise<z.output<S>> {
    const late = () => new GuestAgentUnavailable(command, "timeout", `no answer from the guest agent within ${timeoutMs} ms`);
    if (this.closed) throw new GuestAgentUnavailable(command, "closed", "the guest agent session is closed");
    const sock = await this.ensureConnected(command);
    // A guest that never opens its end of the port makes QEMU stop reading: do not pile up requests.
    if (sock.writableLength > MAX_UNSENT) {
      throw new GuestAgentUnavailable(command, "busy", "the guest is not reading its agent channel (is the guest agent running?)");
    }
    if (!this.synced) {
      const left = deadline - Date.now();
      if (left <= 0) throw late();
      await this.sync(sock, Math.min(this.o.syncTimeoutMs, left));
    }
    const left = deadline - Date.now();
    if (left <= 0) throw late();
    return this.exchange(sock, command, args, schema, opts, opts.noReplyOnSuccess ? timeoutMs : left, timeoutMs);
  }

  /** Drop the connection and refuse further calls. */
  close(): void {
    this.closed = true;
    this.dropConnection(new GuestAgentUnavailable("agent", "closed", "the guest agent session is closed"));
  }

  /** Forget the stream state (e.g. the guest was reset): the next call re-syncs first. */
  desync(): void {
    this.synced = false;
  }

  // ---- connection ----------------------------------------------------------------------

  private async ensureConnected(command: string): Promise<Socket> {
    if (this.sock && !this.sock.destroyed) return this.sock;
    if (this.connecting) return this.connecting;
    const wait = this.nextConnectAt - Date.now();
    if (wait > 0) throw new GuestAgentUnavailable(command, "disconnected", `not connected to the guest agent channel (next attempt in ${wait} ms)`);
    this.connecting = this.connect().finally(() => (this.connecting = undefined));
    try {
      const sock = await this.connecting;
      this.backoffMs = this.o.minBackoffMs;
      return sock;
    } catch (err) {
      this.nextConnectAt = Date.now() + this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, this.o.maxBackoffMs);
      throw new GuestAgentUnavailable(command, "disconnected", `cannot connect to the guest agent channel: ${(err as Error).message}`);
    }
  }

  private connect(): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const sock = createConnection(this.socketPath);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error("connect timed out"));
      }, 3000);
      sock.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      sock.once("connect", () => {
        clearTimeout(timer);
        sock.removeAllListeners("error");
        sock.on("error", () => undefined);
        sock.on("data", (b: Buffer) => this.onData(b));
        sock.on("close", () => {
          if (this.sock !== sock) return;
          this.dropConnection(new GuestAgentUnavailable("agent", "disconnected", "the guest agent channel closed"));
          this.nextConnectAt = Date.now() + this.backoffMs;
          this.backoffMs = Math.min(this.backoffMs * 2, this.o.maxBackoffMs);
        });
        this.sock = sock;
        this.synced = false;
        this.chunks = [];
        this.pendingBytes = 0;
        this.skipping = false;
        this.emit("connected");
        resolve(sock);
      });
    });
  }

  private dropConnection(err: Error): void {
    const s = this.sock;
    this.sock = undefined;
    this.synced = false;
    this.chunks = [];
    this.pendingBytes = 0;
    this.skipping = false;
    if (s && !s.destroyed) s.destroy();
    const w = this.waiter;
    this.waiter = undefined;
    w?.fail(err);
  }

  // ---- framing -------------------------------------------------------------------------

  private onData(b: Buffer): void {
    // 0xFF never occurs in UTF-8 JSON: qemu-ga sends it before a guest-sync-delimited reply,
    // and anything before it is left over from an earlier exchange.
    const s = b.lastIndexOf(SENTINEL);
    if (s >= 0) {
      this.chunks = [];
      this.pendingBytes = 0;
      this.skipping = false;
      b = b.subarray(s + 1);
    }
    let start = 0;
    for (;;) {
      const nl = b.indexOf(NEWLINE, start);
      if (nl < 0) break;
      const piece = b.subarray(start, nl);
      start = nl + 1;
      if (this.skipping) {
        this.skipping = false;
        continue;
      }
      if (this.pendingBytes + piece.length > this.o.maxLineBytes) {
        this.oversized();
        this.chunks = [];
        this.pendingBytes = 0;
        continue;
      }
      const line = this.chunks.length ? Buffer.concat([...this.chunks, piece]) : piece;
      this.chunks = [];
      this.pendingBytes = 0;
      this.onLine(line);
    }
    const rest = b.subarray(start);
    if (!rest.length || this.skipping) return;
    if (this.pendingBytes + rest.length > this.o.maxLineBytes) {
      this.chunks = [];
      this.pendingBytes = 0;
      this.skipping = true;
      this.oversized();
      return;
    }
    this.chunks.push(Buffer.from(rest));
    this.pendingBytes += rest.length;
  }

  private oversized(): void {
    const w = this.waiter;
    this.waiter = undefined;
    this.synced = false;
    w?.fail(new GuestAgentUnavailable("agent", "protocol", `the guest sent a reply longer than ${this.o.maxLineBytes} bytes; it was discarded`));
  }

  private onLine(line: Buffer): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line.toString("utf8"));
    } catch {
      return; // not JSON: noise from the guest, ignored
    }
    if (typeof msg !== "object" || msg === null || Array.isArray(msg)) return;
    this.waiter?.offer(msg as Record<string, unknown>);
  }

  /** Waits `waitMs` for the reply; a timeout names `timeoutMs`, the call's whole allowance. */
  private wait<T>(waitMs: number, timeoutMs: number, command: string, offer: (msg: Record<string, unknown>, settle: (v: T) => void, fail: (e: Error) => void) => boolean): {
    promise: Promise<T>;
    onTimeout: (fn: () => T | Error) => void;
  } {
    let onTimeout: () => T | Error = () => new GuestAgentUnavailable(command, "timeout", `no answer from the guest agent within ${timeoutMs} ms`);
    const promise = new Promise<T>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        if (this.waiter === w) this.waiter = undefined;
      };
      const w: Waiter = {
        offer: (msg) =>
          offer(
            msg,
            (v) => {
              done();
              resolve(v);
            },
            (e) => {
              done();
              reject(e);
            },
          ),
        fail: (e) => {
          done();
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        done();
        const r = onTimeout();
        if (r instanceof Error) reject(r);
        else resolve(r);
      }, waitMs);
      this.waiter = w;
    });
    return { promise, onTimeout: (fn) => (onTimeout = fn) };
  }

  /** guest-sync-delimited with a fresh id; every other line is stale and dropped. */
  private async sync(sock: Socket, timeoutMs: number): Promise<void> {
    const id = randomInt(1, 2 ** 47);
    const { promise } = this.wait<void>(timeoutMs, timeoutMs, "guest-sync-delimited", (msg, settle) => {
      if (msg["return"] !== id) return false;
      settle();
      return true;
    });
    // A leading 0xFF makes qemu-ga drop any partial request left in its parser.
    sock.write(Buffer.concat([Buffer.from([SENTINEL]), Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }) + "\n")]));
    await promise;
    this.synced = true;
    this.syncs++;
    this.lastReplyAt = Date.now();
    this.emit("synced", this.syncs);
  }

  private async exchange<S extends z.ZodTypeAny>(
    sock: Socket,
    command: string,
    args: Record<string, unknown> | undefined,
    schema: S,
    opts: CallOptions,
    waitMs: number,
    timeoutMs: number,
  ): Promise<z.output<S>> {
    const id = `vmhost-${this.prefix}-${++this.seq}`;
    const { promise, onTimeout } = this.wait<unknown>(waitMs, timeoutMs, command, (msg, settle, fail) => {
      // qemu-ga echoes the request's id (measured with 7.2); anything else is stale, including
      // the id-less parse error qemu-ga answers to the 0xFF that precedes a handshake.
      if (msg["id"] !== id) return false;
      if (!("return" in msg) && !("error" in msg)) return false;
      this.lastReplyAt = Date.now(); // an error answer is still an answer: the agent is alive
      if ("error" in msg) {
        const e = (msg["error"] ?? {}) as Record<string, unknown>;
        fail(new GuestAgentError(command, guestText(e["class"] ?? "GenericError", 64), guestText(e["desc"] ?? "error")));
      } else settle(msg["return"]);
      return true;
    });
    if (opts.noReplyOnSuccess) {
      onTimeout(() => {
        this.synced = false; // nothing came back: we cannot know what the stream holds now
        return undefined;
      });
    }
    sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + "\n");
    let ret: unknown;
    try {
      ret = await promise;
    } catch (err) {
      // The channel closing after guest-shutdown is the guest going down: the request was taken.
      if (opts.noReplyOnSuccess && err instanceof GuestAgentUnavailable && err.reason === "disconnected") return undefined as z.output<S>;
      if (err instanceof GuestAgentUnavailable && err.reason === "timeout") this.synced = false;
      throw err;
    }
    this.lastReplyAt = Date.now();
    if (opts.noReplyOnSuccess && ret === undefined) return undefined as z.output<S>;
    const parsed = schema.safeParse(ret);
    if (!parsed.success) {
      const i = parsed.error.issues[0];
      throw new GuestAgentUnavailable(command, "protocol", `the guest agent's answer is not valid (${i ? `${i.path.join(".") || "value"}: ${i.message}` : "invalid"})`);
    }
    return parsed.data as z.output<S>;
  }
}

/** Common reply schemas. */
export const Empty = z.object({}).passthrough();
export const AnyReply = z.unknown();
