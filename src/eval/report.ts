import { readFile } from "node:fs/promises";
import { writePlot, type PlotRow, type PlotSpec } from "../interp/plot.ts";
import type { LanguageResult } from "./evaluate.ts";
import type { Lang } from "./languages.ts";
import { macroAverage } from "./metrics.ts";

/**
 * Tables and charts of evaluation results: a plain-text table for the terminal, CSV rows, the
 * markdown table of a question-alignment run (languages x {base, aligned, delta}) and its chart
 * (rendered by src/interp/plot.ts from a Vega-Lite spec).
 */

/** Node's and qalign's versions (qalign's from package.json), recorded with every result. */
export async function versions(): Promise<{ node: string; qalign: string }> {
  const pkg = JSON.parse(await readFile(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
  return { node: process.version, qalign: pkg.version };
}

/** A percentage with one decimal ("57.5"); "-" for NaN. */
export function pct(x: number): string {
  return Number.isFinite(x) ? (100 * x).toFixed(1) : "-";
}

/** "[48.3, 66.4]": a Wilson interval in percent. */
function ci(r: LanguageResult): string {
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
  }));
}

/** Base and aligned results of one language (aligned null until evaluated). */
export interface Comparison {
  lang: Lang;
  base: LanguageResult;
  aligned: LanguageResult | null;
}

/**
 * The markdown table languages x {base, aligned, delta}: accuracy (%) with its 95% interval,
 * delta in points, the question-translation source languages marked with †, and the Acc row
 * (mean over languages).
 */
export function comparisonTable(rows: readonly Comparison[], trained: readonly Lang[]): string {
  const out = ["| language | n | base Acc_l % [95% CI] | aligned Acc_l % [95% CI] | delta (points) |", "|---|---:|---|---|---:|"];
  for (const { lang, base, aligned } of rows) {
    const delta = aligned ? (100 * (aligned.accuracy - base.accuracy)).toFixed(1) : "-";
    out.push(`| ${lang}${trained.includes(lang) ? " †" : ""} | ${base.n} | ${pct(base.accuracy)} ${ci(base)} | ${aligned ? `${pct(aligned.accuracy)} ${ci(aligned)}` : "-"} | ${delta} |`);
  }
  const accBase = macroAverage(rows.map((r) => r.base.accuracy));
  const done = rows.flatMap((r) => (r.aligned ? [r.aligned.accuracy] : []));
  const accAligned = done.length === rows.length ? macroAverage(done) : NaN;
  const delta = Number.isFinite(accAligned) ? (100 * (accAligned - accBase)).toFixed(1) : "-";
  out.push(`| **Acc** (mean) | | **${pct(accBase)}** | **${pct(accAligned)}** | **${delta}** |`);
  return out.join("\n") + "\n";
}

/**
 * Draws base vs aligned accuracy per language as grouped bars with their 95% intervals and a
 * dashed line at chance (100 / classes), writing `<file>.svg` with its rows as `.json` / `.csv`.
 * @param file path of the SVG
 * @returns the files written
 */
export async function writeAccuracyChart(file: string, rows: readonly Comparison[], trained: readonly Lang[], title: string, subtitle: string): Promise<string[]> {
  const name = (lang: Lang) => (trained.includes(lang) ? `${lang} †` : lang);
  const data: PlotRow[] = rows.flatMap(({ lang, base, aligned }) =>
    (aligned ? [["base", base] as const, ["aligned", aligned] as const] : [["base", base] as const]).map(([model, r]) => ({
      language: name(lang),
      model,
      accuracy: 100 * r.accuracy,
      low: 100 * r.ci95.low,
      high: 100 * r.ci95.high,
      n: r.n,
    })),
  );
  const chance = 100 / (rows[0]?.base.classes.length ?? 2);
  const x = { field: "language", type: "nominal", sort: rows.map((r) => name(r.lang)), title: "language († = question-translation source language)" } as const;
  const xOffset = { field: "model", sort: ["base", "aligned"] } as const;
  const spec = {
    title: { text: title, subtitle },
    width: Math.max(300, 36 * rows.length),
    height: 260,
    layer: [
      {
        mark: "bar",
        encoding: {
          x,
          xOffset,
          y: { field: "accuracy", type: "quantitative", title: "accuracy (%)", scale: { domain: [0, 100] } },
          color: { field: "model", type: "nominal", title: "model", sort: ["base", "aligned"] },
        },
      },
      {
        mark: { type: "rule", color: "black" },
        encoding: { x, xOffset, y: { field: "low", type: "quantitative", title: "accuracy (%)" }, y2: { field: "high" } },
      },
      { mark: { type: "rule", strokeDash: [4, 4], color: "gray" }, encoding: { y: { datum: chance } } },
    ],
  } as PlotSpec;
  const files = await writePlot(file, spec, data);
  return [files.svg, files.json, files.csv];
}
