import { createConnection } from "node:net";

/** Interactive serial console; Ctrl-] detaches (as telnet and virsh do). */
export function attachConsole(name: string, socket: string): Promise<number> {
  return new Promise((resolve) => {
    const conn = createConnection(socket);
    const stdin = process.stdin;
    const restore = () => {
      if (stdin.isTTY) stdin.setRawMode(false);
      stdin.pause();
    };
    conn.once("connect", () => {
      process.stderr.write(`Connected to ${name}'s serial console. Ctrl-] detaches.\r\n`);
      if (stdin.isTTY) stdin.setRawMode(true);
      stdin.resume();
      stdin.on("data", (b: Buffer) => {
        if (b.includes(0x1d)) {
          conn.end();
          return;
        }
        conn.write(b);
      });
      conn.pipe(process.stdout);
    });
    conn.once("error", (err) => {
      restore();
      process.stderr.write(`vmhost: console of ${name}: ${err.message}\n`);
      resolve(1);
    });
    conn.once("close", () => {
      restore();
      process.stderr.write(`\r\nDetached from ${name}.\r\n`);
      resolve(0);
    });
  });
}
