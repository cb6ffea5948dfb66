import { createConnection } from "node:net";
import type { WebSocket } from "ws";
import { VmhostError } from "../../util/errors.js";
import type { VmHost } from "../vmhost.js";

/**
 * The consoles as WebSockets proxied by vmhostd (nothing local reaches the caller):
 *  - serial: the VM's serial chardev socket (RunPaths.serialSocket; QEMU serves one client at a time);
 *  - graphical: the VM's VNC unix socket (RunPaths.vncSocket, `vmhost set NAME --display on`), RFB
 *    bytes for noVNC. QEMU's own `websocket=` port is never opened: it would bypass authentication.
 * Binary frames carry the bytes both ways; text frames from the client are sent as UTF-8. The
 * unix connection is opened before the upgrade, so a VM that is off or has no display is a
 * plain 409 and not a WebSocket that closes at once.
 */
export async function openConsole(host: VmHost, ref: string, which: "serial" | "vnc"): Promise<(ws: WebSocket) => void> {
  const vm = await host.vms.get(ref);
  const run = host.supervisor.runPaths(vm);
  if (!run) throw new VmhostError("invalid-state", `VM "${vm.name}" is not running`, 409);
  if (which === "vnc" && !vm.display) {
    throw new VmhostError("no-display", `VM "${vm.name}" has no display; turn it on with: vmhost set "${vm.name}" --display on (VM off)`, 409);
  }
  const path = which === "serial" ? run.serialSocket : run.vncSocket;
  const conn = createConnection(path);
  await new Promise<void>((resolve, reject) => {
    conn.once("connect", resolve);
    conn.once("error", (err) => reject(new VmhostError("console-unavailable", `the ${which} console of "${vm.name}" does not answer: ${err.message}`, 409)));
  });
  return (ws) => {
    const ping = setInterval(() => ws.ping(), 30_000);
    ping.unref();
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      clearInterval(ping);
      conn.destroy();
      if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(1000, "console closed");
    };
    conn.on("data", (b: Buffer) => {
      ws.send(b, { binary: true });
      // Backpressure: a slow viewer pauses the VM's output instead of growing vmhostd's memory.
      if (ws.bufferedAmount > 4 * 1024 * 1024) {
        conn.pause();
        const t = setInterval(() => {
          if (ws.bufferedAmount < 1024 * 1024 || closed) {
            clearInterval(t);
            conn.resume();
          }
        }, 20);
      }
    });
    ws.on("message", (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
      const b = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
      conn.write(isBinary ? b : Buffer.from(b.toString("utf8")));
    });
    conn.on("close", close);
    conn.on("error", close);
    ws.on("close", close);
    ws.on("error", close);
  };
}
