import cliProgress from "cli-progress";
import type { OptionTable } from "./args.ts";

/**
 * Progress on stderr: the library reports counts through callbacks (bytes of a model load, items
 * of a language, optimizer steps, probed items), and this file draws them. On a terminal a live
 * bar (cli-progress) that notices scroll above; on a pipe or file, plain lines: the first update
 * after the starting report, then one every PLAIN_INTERVAL_MS, then the last, so that a log read
 * hours later shows the pace.
 * `--quiet` draws nothing; notices, warnings and results still print.
 */

/** The --quiet option of every command that reports progress. */
export const quietOption = {
  quiet: { type: "boolean", help: "no progress lines on stderr (notices, warnings and results still print)" },
} as const satisfies OptionTable;

/** How often a non-terminal stderr gets a progress line, in milliseconds. */
const PLAIN_INTERVAL_MS = 10_000;

/** What a progress count counts: items, optimizer steps, or bytes (shown in MB / GB). */
export type Unit = "items" | "steps" | "bytes";

/** One counted piece of work. */
export interface ProgressTask {
  /**
   * @param done work done so far, in the task's unit (at most its total)
   * @param note a short suffix, e.g. "loss 2.3104 | lr 5.00e-5"
   */
  update(done: number, note?: string): void;
  /** Ends the task: a bar is removed, a plain task prints its last state unless it just did. */
  stop(): void;
}

/** "1h02m", "3m05s", "42s". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const [h, m, r] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  return m > 0 ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
}

/** A count in its unit: "120/600 items", "1.21/14.48 GB". */
function formatCount(done: number, total: number, unit: Unit): string {
  if (unit !== "bytes") return `${done}/${total} ${unit}`;
  const [scale, name] = total >= 1e9 ? [1e9, "GB"] : [1e6, "MB"];
  return `${(done / scale).toFixed(2)}/${(total / scale).toFixed(2)} ${name}`;
}

/**
 * The text of a progress line after the label: count, rate, ETA, note.
 * @param rate units per second since the first report (0: not known yet)
 */
export function progressText(done: number, total: number, unit: Unit, rate: number, note?: string): string {
  const shownRate = unit === "bytes" ? `${(rate / 1e6).toFixed(1)} MB/s` : `${rate.toFixed(rate < 10 ? 2 : 1)} ${unit}/s`;
  const eta = done >= total ? "done" : rate > 0 ? `ETA ${formatDuration((total - done) / rate)}` : "ETA -";
  return [formatCount(done, total, unit), shownRate, eta, ...(note ? [note] : [])].join(" | ");
}

/** Where progress and notices go, and how. */
export interface ProgressOptions {
  /** Draw no progress (notices still print). */
  quiet?: boolean;
  /** Default process.stderr. */
  stream?: NodeJS.WriteStream;
  /** Plain-line interval (default PLAIN_INTERVAL_MS). */
  intervalMs?: number;
}

/** Progress and notices of one command run (see the file comment). */
export class Progress {
  private readonly stream: NodeJS.WriteStream;
  private readonly tty: boolean;
  private bars: cliProgress.MultiBar | null = null;
  private active = 0;

  constructor(private readonly opts: ProgressOptions = {}) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = this.stream.isTTY === true;
  }

  /** A notice: one line on stderr, above a live bar. */
  say(line: string): void {
    if (this.bars) this.bars.log(`${line}\n`);
    else this.stream.write(`${line}\n`);
  }

  /** Starts counting `total` units of work labelled `label` (e.g. "eval zh"). */
  task(label: string, total: number, unit: Unit): ProgressTask {
    if (this.opts.quiet) return { update: () => {}, stop: () => {} };
    // The rate counts from the first report (a library reports (0, total) when it starts; the
    // trainer first reports after step 1, or after the step it resumed at).
    let first: { done: number; at: number } | null = null;
    const text = (done: number, note?: string) => {
      const now = performance.now();
      first ??= { done, at: now };
      const rate = now > first.at ? ((done - first.done) * 1000) / (now - first.at) : 0;
      return progressText(done, total, unit, rate, note);
    };
    if (this.tty) return this.barTask(label, total, text);
    const interval = this.opts.intervalMs ?? PLAIN_INTERVAL_MS;
    let last: { done: number; note?: string } | null = null;
    let printedAt = -Infinity;
    let printed: number | null = null;
    const print = (done: number, note?: string) => {
      this.stream.write(`${label}: ${text(done, note)}\n`);
      printedAt = performance.now();
      printed = done;
    };
    return {
      update: (done, note) => {
        // The first report (0 done, or the step a training resumed at) starts the clock, unprinted.
        if (last === null) text(done);
        else if (performance.now() - printedAt >= interval) print(done, note);
        last = { done, note };
      },
      stop: () => {
        if (last && printed !== last.done) print(last.done, last.note);
      },
    };
  }

  /**
   * A task fed by a library's (done, total) reports: it starts at the first report and stops when
   * done reaches total.
   */
  counter(label: string, unit: Unit): (done: number, total: number, note?: string) => void {
    let task: ProgressTask | null = null;
    return (done, total, note) => {
      task ??= this.task(label, total, unit);
      task.update(done, note);
      if (done >= total) {
        task.stop();
        task = null;
      }
    };
  }

  /** {@link counter}s by label, made on the first report of each: for reports that name their piece. */
  counters(unit: Unit): (label: string, done: number, total: number) => void {
    const byLabel = new Map<string, (done: number, total: number) => void>();
    return (label, done, total) => {
      if (!byLabel.has(label)) byLabel.set(label, this.counter(label, unit));
      byLabel.get(label)!(done, total);
    };
  }

  /** A live bar in the shared MultiBar, removed when stopped. */
  private barTask(label: string, total: number, text: (done: number, note?: string) => string): ProgressTask {
    this.bars ??= new cliProgress.MultiBar(
      { stream: this.stream, format: "{label} {bar} {text}", barsize: 24, hideCursor: true, clearOnComplete: true, stopOnComplete: false, fps: 5 },
      cliProgress.Presets.shades_classic,
    );
    this.active++;
    const bar = this.bars.create(total, 0, { label, text: "" });
    let stopped = false;
    return {
      update: (done, note) => bar.update(done, { label, text: text(done, note) }),
      stop: () => {
        if (stopped) return;
        stopped = true;
        this.bars?.remove(bar);
        if (--this.active === 0) {
          this.bars?.stop();
          this.bars = null;
        }
      },
    };
  }
}
