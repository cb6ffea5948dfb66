/**
 * UCS-2 little-endian, as UEFI stores names and descriptions. Decoding is per code unit, so
 * any byte string of even length survives decode -> encode unchanged (lone surrogates too).
 */

/** Code units of `bytes[start, end)`; `end - start` must be even (caller checks). */
export function decodeUcs2(bytes: Uint8Array, start = 0, end = bytes.length): string {
  let s = "";
  const parts: string[] = [];
  for (let i = start; i + 1 < end; i += 2) {
    s += String.fromCharCode(bytes[i]! | (bytes[i + 1]! << 8));
    if (s.length >= 4096) {
      parts.push(s);
      s = "";
    }
  }
  parts.push(s);
  return parts.join("");
}

/** UCS-2LE bytes of `text`, plus a NUL code unit when `terminate`. */
export function encodeUcs2(text: string, terminate = true): Uint8Array {
  const out = new Uint8Array((text.length + (terminate ? 1 : 0)) * 2);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    out[i * 2] = c & 0xff;
    out[i * 2 + 1] = c >> 8;
  }
  return out;
}

/**
 * Offset just past the NUL code unit of the string starting at `start`, or -1 when there is
 * none before `end`.
 */
export function findUcs2Terminator(bytes: Uint8Array, start: number, end = bytes.length): number {
  for (let i = start; i + 1 < end; i += 2) {
    if (bytes[i] === 0 && bytes[i + 1] === 0) return i + 2;
  }
  return -1;
}
