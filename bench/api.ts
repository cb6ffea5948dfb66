/**
 * Issue 10's API figures, measured side by side in one run against one real vmhostd:
 *  (1) API call latency over HTTPS (TLS 1.3, API token, keep-alive) against the unix socket:
 *      `GET /v1/vms/{vm}` through the SDK, interleaved in rounds of 50 so drift hits both alike;
 *      median of N calls each. Target: HTTPS <= 1.5x the unix socket.
 *  (2) Serial console keystroke echo through vmhostd's WebSocket against QEMU's serial socket
 *      directly: one key to the guest's shell, timed until its echo comes back (the guest's tty
 *      echoes it); each round's line of keys then runs as an unknown command. QEMU serves one serial client at a
 *      time, so the two alternate in rounds of 20 keys. One appliance VM boots (TCG here).
 *
 *   node dist/bench/api.js [calls=2000] [keys=200]
 */
import { createConnection, type Socket } from "node:net";
import { VmhostClient, type SocketLike } from "../packages/sdk/src/index.js";
import { fetchPinnedCertificate, httpsTransport, unixTransport } from "../packages/sdk/src/node.js";
import { BOOT_TIMEOUT_MS, READY, TestHost } from "../test/helpers/harness.js";
import { median, printTable, ratio } from "./stats.js";

const CALLS = Number(process.argv[2] ?? 2000);
const KEYS = Number(process.argv[3] ?? 200);
const VM = "bench";

const now = () => Number(process.hrtime.bigint()) / 1e6;

async function callLatency(unix: VmhostClient, https: VmhostClient): Promise<{ unix: number[]; https: number[] }> {
  const out = { unix: [] as number[], https: [] as number[] };
  for (const c of [unix, https]) for (let i = 0; i < 50; i++) await c.api.vms.get({ vm: VM }); // warm-up: connections, JIT
  for (let done = 0; done < CALLS; done += 50) {
    for (const [c, xs] of [[unix, out.unix], [https, out.https]] as const) {
      for (let i = 0; i < 50; i++) {
        const t = now();
        await c.api.vms.get({ vm: VM });
        xs.push(now() - t);
      }
    }
  }
  return out;
}

/** A byte stream with "wait until this text has arrived". */
class Echo {
  private buf = "";
  private waiter?: { text: string; resolve: () => void };
  feed(b: Buffer): void {
    this.buf += b.toString("latin1");
    if (this.waiter && this.buf.includes(this.waiter.text)) {
      const w = this.waiter;
      this.waiter = undefined;
      this.buf = "";
      w.resolve();
    }
  }
  /** Resolves when `text` has arrived; rejects after `timeoutMs`. */
  wait(text: string, timeoutMs = 10_000): Promise<void> {
    if (this.buf.includes(text)) {
      this.buf = "";
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no ${JSON.stringify(text)} from the guest within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = { text, resolve: () => (clearTimeout(t), resolve()) };
    });
  }
  clear(): void {
    this.buf = "";
  }
}

/** Until the shell answers with its prompt: keys typed while it starts are flushed by it. */
async function prompt(send: (b: Buffer) => void, echo: Echo): Promise<void> {
  for (let i = 0; ; i++) {
    echo.clear();
    send(Buffer.from("\r"));
    try {
      await echo.wait("~# ", 2000);
      return;
    } catch (err) {
      if (i === 30) throw err;
    }
  }
}

async function keys(send: (b: Buffer) => void, echo: Echo, n: number, xs: number[]): Promise<void> {
  await prompt(send, echo);
  for (let i = 0; i < n; i++) {
    echo.clear();
    const t = now();
    send(Buffer.from("k"));
    await echo.wait("k");
    xs.push(now() - t);
  }
  // The line of k's runs as a command nobody has; the prompt comes back.
  await prompt(send, echo);
}

async function consoleEcho(host: TestHost, client: VmhostClient): Promise<{ ws: number[]; raw: number[] }> {
  const out = { ws: [] as number[], raw: [] as number[] };
  const socketPath = await host.serialSocket(VM);
  for (let done = 0; done < KEYS; done += 20) {
    {
      const s: Socket = createConnection(socketPath);
      await new Promise<void>((r) => s.once("connect", () => r()));
      const e = new Echo();
      s.on("data", (b: Buffer) => e.feed(b));
      await keys((b) => s.write(b), e, 20, out.raw);
      s.destroy();
    }
    {
      const ws: SocketLike = await client.api.vms.serialConsole({ vm: VM });
      const e = new Echo();
      ws.addEventListener("message", (ev) => e.feed(ev.data as Buffer));
      await keys((b) => ws.send(b), e, 20, out.ws);
      await new Promise<void>((r) => {
        ws.addEventListener("close", () => r());
        ws.close();
      });
    }
  }
  return out;
}

async function main(): Promise<void> {
  const host = await TestHost.create();
  try {
    await host.ok(["new", VM, "--generation", "2", "--appliance", "--memory", "512M"]);
    await host.ok(["service", "listen", "127.0.0.1:0"]);
    const status = await host.json<{ port: number; fingerprint: string }>(["service", "status"]);
    const token = (await host.json<{ token: string }>(["token", "add", "bench", "--role", "administrator"])).token;
    const url = `https://127.0.0.1:${status.port}`;
    const serverCertificate = await fetchPinnedCertificate(url, status.fingerprint);
    const unix = new VmhostClient(unixTransport(`${host.home}/run/vmhostd.sock`));
    const https = new VmhostClient(httpsTransport({ url, serverCertificate, token }));
    const lat = await callLatency(unix, https);
    const u = median(lat.unix) * 1000;
    const h = median(lat.https) * 1000;
    printTable(`API call latency, GET /v1/vms/{vm} through the SDK (µs, median of ${CALLS}, interleaved; keep-alive)`, [["HTTPS (TLS 1.3, API token)", h, "unix socket", u, ratio(h, u)]]);

    await host.ok(["start", VM]);
    await host.waitConsole(VM, READY, BOOT_TIMEOUT_MS);
    const echo = await consoleEcho(host, https);
    const w = median(echo.ws);
    const r = median(echo.raw);
    printTable(`Serial console keystroke echo from the guest's shell (ms, median of ${KEYS}, alternating rounds of 20; TCG)`, [
      ["vmhostd WebSocket over HTTPS", w, "QEMU's serial socket directly", r, ratio(w, r)],
    ]);
    unix.close();
    https.close();
  } finally {
    await host.cleanup();
  }
}

await main();
