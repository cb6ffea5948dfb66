import type { ServerResponse } from "node:http";
import { httpError } from "./errors.js";

/**
 * One NDJSON reply: the head goes out with the first line, so a failure before it is still a
 * plain JSON error reply with its status; a failure after it is an `{"type":"error"}` line.
 */
export class LineStream<L> {
  private started = false;
  private ended = false;
  /** Aborted when the client goes away. */
  readonly closed: AbortSignal;

  constructor(private readonly res: ServerResponse) {
    const ac = new AbortController();
    this.closed = ac.signal;
    res.on("close", () => ac.abort());
  }

  line(obj: L): void {
    if (this.ended || this.res.destroyed) return;
    if (!this.started) {
      this.started = true;
      this.res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
      // A stream may stay quiet for long: the idle timeout is for half-sent requests, not for this.
      this.res.socket?.setTimeout(0);
      this.res.socket?.setKeepAlive(true, 30_000);
    }
    this.res.write(JSON.stringify(obj) + "\n");
  }

  fail(err: unknown): void {
    if (this.ended || this.res.destroyed) return;
    const h = httpError(err);
    if (this.started) {
      this.res.write(JSON.stringify({ type: "error", error: h.body.error }) + "\n");
      this.end();
      return;
    }
    this.ended = true;
    const body = JSON.stringify(h.body);
    this.res.writeHead(h.status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    this.res.end(body);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.started) this.res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
    this.res.end();
  }
}
