import { open, type FileHandle } from "node:fs/promises";
import { tryLock } from "fs-native-extensions";

/**
 * One vmhostd per home, decided by the kernel: an open-file-description lock
 * (fcntl F_OFD_SETLK, through fs-native-extensions) on `host/vmhostd.lock`. The kernel drops it
 * when the holder dies, however it dies, so no pid is ever guessed at; Node opens files
 * close-on-exec, so QEMUs started by the service do not inherit it.
 */
export class ServiceLock {
  private constructor(private readonly fh: FileHandle) {}

  /** The lock, or undefined when another live process holds it. The file gets our pid (for people). */
  static async acquire(file: string): Promise<ServiceLock | undefined> {
    const fh = await open(file, "a+", 0o600);
    if (!tryLock(fh.fd)) {
      await fh.close();
      return undefined;
    }
    await fh.truncate(0);
    await fh.write(`${process.pid}\n`, 0);
    return new ServiceLock(fh);
  }

  async release(): Promise<void> {
    await this.fh.close();
  }
}
