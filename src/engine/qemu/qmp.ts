import { EventEmitter } from "node:events";
import { createConnection, type Socket } from "node:net";

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`${command}: ${desc}`);
    this.name = "QmpError";
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** Largest single QMP line we accept; anything bigger is a protocol fault, not data. */
const MAX_LINE = 16 * 1024 * 1024;

/**
 * A QMP (QEMU Machine Protocol) client: newline-delimited JSON over a unix socket.
 * Emits "event" for asynchronous events and "close" once when the connection ends
 * (which, for the control socket of a running VM, means QEMU went away).
 */
export class QmpClient extends EventEmitter {
  private buf = "";
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;
  greeting: unknown;

  private constructor(private readonly sock: Socket) {
    super();
  }

  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const sock = createConnection(path);
    const client = new QmpClient(sock);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`QMP ${path}: no greeting within ${timeoutMs} ms`));
      }, timeoutMs);
      const fail = (err: Error) => {
        clearTimeout(timer);
        reject(err);
      };
      sock.once("error", fail);
      client.once("greeting", () => {
        clearTimeout(timer);
        sock.off("error", fail);
        resolve();
      });
      client.attach();
    });
    await client.execute("qmp_capabilities");
    return client;
  }

  private attach(): void {
    this.sock.setEncoding("utf8");
    this.sock.on("data", (chunk: string) => {
      this.buf += chunk;
      if (this.buf.length > MAX_LINE) {
        this.sock.destroy(new Error("QMP line too long"));
        return;
      }
      let nl: number;
      while ((nl = this.buf.indexOf("\n")) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (line) this.onLine(line);
      }
    });
    this.sock.on("error", () => undefined);
    this.sock.on("close", () => this.onClose());
  }

  private onLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if ("QMP" in msg) {
      this.greeting = msg["QMP"];
      this.emit("greeting");
      return;
    }
    if (typeof msg["event"] === "string") {
      this.emit("event", msg as unknown as QmpEvent);
      return;
    }
    const id = msg["id"];
    const p = typeof id === "string" ? this.pending.get(id) : undefined;
    if (!p) return;
    this.pending.delete(id as string);
    clearTimeout(p.timer);
    if ("error" in msg) {
      const e = msg["error"] as { class?: string; desc?: string };
      p.reject(new QmpError(p.command, e.class ?? "GenericError", e.desc ?? "error"));
    } else p.resolve(msg["return"]);
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(`${p.command}: QMP connection closed`));
    }
    this.pending.clear();
    this.emit("close");
  }

  get isClosed(): boolean {
    return this.closed;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`${command}: QMP connection closed`));
    const id = `vmhost-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${command}: no answer from QEMU within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + "\n");
    });
  }

  close(): void {
    this.sock.end();
    this.sock.destroy();
  }
}
