/** The part of fs-native-extensions (holepunchto) vmhost uses: Linux OFD record locks (fcntl F_OFD_SETLK). */
declare module "fs-native-extensions" {
  /** Tries an exclusive (or shared) lock on the whole file; false when another holder has it (EAGAIN). */
  export function tryLock(fd: number, opts?: { shared?: boolean }): boolean;
  export function unlock(fd: number): void;
}
