// SHA-256 on a thread of its own (ParallelSha256 in copy.ts): the copy reads and writes while
// this hashes, and vmhostd's event loop never spends seconds in a digest. Messages: `data`
// (an ArrayBuffer handed over, `length` bytes of it), `zeros` (that many zero bytes: a hole),
// `digest`; each is answered (`ack`, or `digest` with the hex string).
import { createHash } from "node:crypto";
import { parentPort } from "node:worker_threads";

const hash = createHash("sha256");
const ZEROS = Buffer.alloc(1024 * 1024);

parentPort?.on("message", (m: { data?: ArrayBuffer; length?: number; zeros?: number; digest?: boolean }) => {
  if (m.digest) {
    parentPort!.postMessage({ digest: hash.digest("hex") });
    return;
  }
  if (m.data) hash.update(new Uint8Array(m.data, 0, m.length ?? m.data.byteLength));
  for (let left = m.zeros ?? 0; left > 0; left -= ZEROS.length) hash.update(left >= ZEROS.length ? ZEROS : ZEROS.subarray(0, left));
  parentPort!.postMessage({ ack: true });
});
