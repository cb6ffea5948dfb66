export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function ratio(a: number, b: number): string {
  return `${(a / b).toFixed(3)}x`;
}

/** Markdown rows: label A, value A, label B, value B, ratio A/B. */
export function printTable(title: string, rows: [string, number, string, number, string][]): void {
  console.log(`\n### ${title}\n`);
  console.log("| measured | value | against | value | ratio |");
  console.log("|---|---|---|---|---|");
  for (const [la, a, lb, b, r] of rows) console.log(`| ${la} | ${fmt(a)} | ${lb} | ${fmt(b)} | ${r} |`);
}

function fmt(x: number): string {
  return x >= 100 ? x.toFixed(0) : x >= 1 ? x.toFixed(2) : x.toFixed(4);
}
