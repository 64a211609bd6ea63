import type { PlotRow } from "../io/plot.ts";
import type { LanguageResult } from "./evaluate.ts";
import type { Lang } from "./languages.ts";
import { macroAverage } from "./metrics.ts";

/**
 * Tables of evaluation results: a plain-text table for the terminal and CSV / chart rows (the
 * question-alignment run's comparison table and chart are in src/align/report.ts).
 */

/** A percentage with one decimal ("57.5"); "-" for NaN. */
export function pct(x: number): string {
  return Number.isFinite(x) ? (100 * x).toFixed(1) : "-";
}

/** "[48.3, 66.4]": a Wilson interval in percent. */
export function ci(r: LanguageResult): string {
  return `[${pct(r.ci95.low)}, ${pct(r.ci95.high)}]`;
}

/**
 * The terminal table of one evaluation: per language n, accuracy (%), its 95% interval, ties,
 * truncated prompts and the label words; then the mean over languages (Acc).
 */
export function formatTable(results: readonly LanguageResult[]): string {
  const header = ["lang", "n", "acc %", "95% CI", "ties", "trunc", "labels"];
  const rows = results.map((r) => [r.lang, String(r.n), pct(r.accuracy), ci(r), String(r.ties), String(r.truncated.length), r.labelWords.join(" / ")]);
  rows.push(["Acc", String(results.reduce((s, r) => s + r.n, 0)), pct(macroAverage(results.map((r) => r.accuracy))), "", "", "", "mean over languages"]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((row) => row[c]!.length)));
  const line = (cells: string[]) => cells.map((cell, c) => (c === cells.length - 1 ? cell : cell.padEnd(widths[c]!))).join("  ");
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}

/** One CSV / chart row per (model, language): counts, accuracy, interval, ties, truncations. */
export function resultRows(model: string, results: readonly LanguageResult[], trained: readonly Lang[] = []): PlotRow[] {
  return results.map((r) => ({
    model,
    task: r.task,
    lang: r.lang,
    trained: trained.includes(r.lang),
    mode: r.mode,
    shots: r.shots,
    n: r.n,
    correct: r.correct,
    accuracy: r.accuracy,
    ci95_low: r.ci95.low,
    ci95_high: r.ci95.high,
    ties: r.ties,
    truncated: r.truncated.length,
    skipped: r.skipped.length,
    label_words: r.labelWords.join("|"),
    seconds: r.seconds,
    protocol: r.protocol,
    labels: r.labels,
    scoring: r.scoring,
    correct_by_index: r.judged.index,
    correct_by_authors: r.judged.authors ?? "",
    rules_differ: r.judged.differ ?? "",
  }));
}
