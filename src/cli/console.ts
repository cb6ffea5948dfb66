import type { SocketLike } from "../../packages/sdk/src/index.js";

/**
 * The interactive serial console over vmhostd's WebSocket (locally and remotely alike; no socket
 * path reaches the CLI). Raw terminal; Ctrl-] detaches, as telnet and virsh do.
 */
export function attachConsole(name: string, ws: SocketLike, stdin: NodeJS.ReadStream = process.stdin, stdout: NodeJS.WriteStream = process.stdout): Promise<number> {
  return new Promise((resolve) => {
    process.stderr.write(`Connected to ${name}'s serial console. Ctrl-] detaches.\r\n`);
    if (stdin.isTTY) stdin.setRawMode(true);
    const onData = (b: Buffer) => {
      const at = b.indexOf(0x1d);
      if (at >= 0) {
        if (at > 0) ws.send(b.subarray(0, at));
        ws.close(1000, "detached");
        return;
      }
      ws.send(b);
    };
    stdin.on("data", onData);
    stdin.on("end", () => ws.close(1000, "input ended"));
    stdin.resume();
    ws.addEventListener("message", (ev) => stdout.write(Buffer.isBuffer(ev.data) ? ev.data : Buffer.from(ev.data as ArrayBuffer)));
    ws.addEventListener("close", () => {
      stdin.off("data", onData);
      if (stdin.isTTY) stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write(`\r\nDetached from ${name}.\r\n`);
      resolve(0);
    });
  });
}
