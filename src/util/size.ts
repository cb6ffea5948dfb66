/**
 * Byte sizes as people type them ("512M", "20G", "1.5GiB", "1048576") and as vmhost prints them.
 * Every unit is binary (K = KB = KiB = 1024), as in qemu-img and Hyper-V's own "GB".
 */

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] as const;

const UNIT_POWER: Readonly<Record<string, number>> = {
  "": 0, b: 0,
  k: 1, kb: 1, kib: 1,
  m: 2, mb: 2, mib: 2,
  g: 3, gb: 3, gib: 3,
  t: 4, tb: 4, tib: 4,
  p: 5, pb: 5, pib: 5,
};

const SIZE_RE = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$/;

export function parseSize(text: string): number {
  const m = SIZE_RE.exec(text);
  if (!m) {
    throw new Error(`invalid size "${text}": expected a number with an optional unit, e.g. 512M, 20G, 1.5GiB or 1048576`);
  }
  const digits = m[1] ?? "";
  const unit = (m[2] ?? "").toLowerCase();
  const power = UNIT_POWER[unit];
  if (power === undefined) {
    throw new Error(`invalid size "${text}": unknown unit "${m[2] ?? ""}" (use B, K, M, G, T or P; KiB/KB etc. also accepted)`);
  }
  // Exact arithmetic: fractional input is scaled in BigInt so "1.5G" is exactly 1610612736.
  const [whole = "0", frac = ""] = digits.split(".");
  const scale = 10n ** BigInt(frac.length);
  const numerator = (BigInt(whole === "" ? "0" : whole) * scale + BigInt(frac === "" ? "0" : frac)) * 1024n ** BigInt(power);
  if (numerator % scale !== 0n) {
    throw new Error(`invalid size "${text}": not a whole number of bytes`);
  }
  const bytes = numerator / scale;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Error(`invalid size "${text}": too large`);
  }
  return Number(bytes);
}

/** "20 GiB", "1.5 GiB", "512 MiB", "1000 B". Exact values round-trip through parseSize. */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) {
    throw new Error(`invalid byte count ${bytes}`);
  }
  let i = 0;
  while (i < UNITS.length - 1 && bytes >= 1024 ** (i + 1)) i++;
  const value = bytes / 1024 ** i;
  const text = i === 0 ? String(Math.round(value)) : String(Number(value.toFixed(2)));
  return `${text} ${UNITS[i]}`;
}
