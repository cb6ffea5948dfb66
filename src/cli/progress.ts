import { formatSize } from "../util/size.js";

/**
 * A one-line progress bar on stderr: `label [#####.....]  42%  1.2 MiB / 3.0 MiB`. Shown when
 * stderr is a terminal, or always with `--progress` (scripts that log it, the tests).
 */
export class ProgressBar {
  private last = "";
  private shown = false;

  constructor(
    private readonly label: string,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {}

  update(done: number, total: number): void {
    const width = 30;
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const fill = Math.round(frac * width);
    const text = `\r${this.label} [${"#".repeat(fill)}${".".repeat(width - fill)}] ${Math.floor(frac * 100)
      .toString()
      .padStart(3)}%  ${formatSize(done)} / ${formatSize(total)}`;
    if (text === this.last) return;
    this.last = text;
    this.shown = true;
    this.out.write(text);
  }

  finish(): void {
    if (this.shown) this.out.write("\n");
    this.shown = false;
  }
}
