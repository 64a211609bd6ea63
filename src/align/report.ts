import { baseName, hostFiles, type Files } from "../io/files.ts";
import { reportHtml } from "../io/html.ts";
import { toCsv, writePlot, type PlotRow, type PlotSpec } from "../io/plot.ts";
import type { LanguageResult } from "../eval/evaluate.ts";
import { LANGUAGE_NAMES, type Lang } from "../eval/languages.ts";
import { macroAverage } from "../eval/metrics.ts";
import { ci, pct, resultRows } from "../eval/report.ts";
import { TASKS, type TaskId } from "../eval/tasks.ts";
import type { AlignResults } from "./config.ts";

/**
 * The report of a question-alignment run: the markdown table languages x {base, aligned, delta},
 * its chart (rendered by src/io/plot.ts from a Vega-Lite spec), report.md around them, and
 * results.json / results.csv with every number.
 */

/** Base and aligned results of one language (aligned null until evaluated). */
export interface Comparison {
  lang: Lang;
  base: LanguageResult;
  aligned: LanguageResult | null;
}

/** Each evaluated language's base and aligned results, in evaluation order. */
export function comparisons(r: Pick<AlignResults, "base" | "aligned">): Comparison[] {
  return r.base.map((b, i) => ({ lang: b.lang, base: b, aligned: r.aligned[i] ?? null }));
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
 * @param files where to write (default: the host's, io/files.ts)
 * @returns the files written, and `svgText`, the SVG itself
 */
export async function writeAccuracyChart(
  file: string,
  rows: readonly Comparison[],
  trained: readonly Lang[],
  title: string,
  subtitle: string,
  files?: Files,
): Promise<{ files: string[]; svgText: string }> {
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
  const plot = await writePlot(file, spec, data, files);
  return { files: [plot.svg, plot.json, plot.csv], svgText: plot.svgText };
}

/**
 * results.json, results.csv, report.md, the chart, and report.html (report.md with the chart
 * inline and every setting of the run, `config` of results.json, at the end: one file to open
 * or send) through `files` (default: the host's, io/files.ts); returns their paths.
 */
export async function writeReports(r: AlignResults, files?: Files): Promise<string[]> {
  const host = files ?? (await hostFiles());
  const join = (dir: string, name: string) => host.join(dir, name);
  const write = (file: string, text: string) => host.writeAtomic(file, [text]);
  const { config: cfg } = r;
  const task = TASKS[cfg.task];
  const out = cfg.out;
  const rows = comparisons(r);
  const trainedName = `${cfg.train.join("+")} -> ${cfg.target}`;
  const shots = r.base[0]?.shots ?? task.shots;
  const items = [...new Set(r.base.map((b) => b.n))].join("/");
  const chart = await writeAccuracyChart(
    join(out, "accuracy.svg"),
    rows,
    cfg.train,
    `${task.title}: accuracy per language, base vs question-aligned (${trainedName})`,
    `${baseName(cfg.modelDir)}, ${shots}-shot, ${cfg.evaluation.mode ?? "prefix"} scoring, ${items} items per language; lines: 95% Wilson intervals; dashed: chance`,
    host,
  );
  const csv = toCsv([...resultRows("base", r.base, cfg.train), ...resultRows("aligned", r.aligned, cfg.train)]);
  await write(join(out, "results.csv"), csv);
  await write(join(out, "results.json"), JSON.stringify(r, null, 1) + "\n");
  const markdown = reportMarkdown(r, rows);
  await write(join(out, "report.md"), markdown);
  const settings = `\n## Settings\n\n\`\`\`json\n${JSON.stringify(cfg, null, 2)}\n\`\`\`\n`;
  await write(join(out, "report.html"), reportHtml(`Question alignment: ${task.title}`, markdown + settings, { "accuracy.svg": chart.svgText }));
  return [join(out, "results.json"), join(out, "results.csv"), join(out, "report.md"), join(out, "report.html"), ...chart.files];
}

/**
 * The commands that reproduce the paper's setting on a real checkpoint, per evaluated task: the
 * paper protocol (the authors' prompts, English answer words, every item), LoRA on SNLI questions
 * from Chinese and Spanish into English (the paper evaluates emotion and PAWS-X after this same
 * question training), 3 epochs at lr 5e-5 (the trainer's defaults). The README shows the same three.
 */
export const PAPER_COMMANDS: Record<TaskId, string> = Object.fromEntries(
  (["snli", "emotion", "paws"] as const).map((task) => [
    task,
    `npm run qalign -- align --model ~/models/Qwen1.5-1.8B --protocol paper --task ${task} --train zh,es --langs all --device webgpu --out runs/qwen1.5-1.8b-${task}-zh+es`,
  ]),
) as Record<TaskId, string>;

/** report.md: what was run, the table, notes on ties / truncation / skipped items, the chart. */
function reportMarkdown(r: AlignResults, rows: readonly Comparison[]): string {
  const { config: cfg, training: t } = r;
  const lora = cfg.training.lora;
  const task = TASKS[cfg.task];
  const ev = r.base[0];
  const lines = [
    `# Question alignment: ${task.title}, ${baseName(cfg.modelDir)}`,
    "",
    `Base model \`${cfg.modelDir}\`, LoRA-tuned (r ${lora.r}, lora_alpha ${lora.lora_alpha}, on ${[lora.target_modules].flat().join(", ")}) ` +
      `only to translate ${TASKS[cfg.trainTask].title} questions from ${cfg.train.map((l) => LANGUAGE_NAMES[l]).join(" and ")} into ${LANGUAGE_NAMES[cfg.target]}: ` +
      `${t.train} training pairs (+${t.val} for validation), ${cfg.training.hyper.epochs} epoch(s), ${t.steps} optimizer steps, lr ${cfg.training.hyper.lr}. ` +
      `Evaluated ${ev?.shots ?? task.shots}-shot in ${rows.length} languages with ${ev?.mode ?? "prefix"} scoring ` +
      `(${ev?.mode === "loglik" ? "log-likelihood of each whole label word" : "next-token probability of each label's prefix tokens, the paper's constrained decoding"}) ` +
      `under the ${ev?.protocol ?? cfg.evaluation.protocol} protocol (below); data: ${r.data}. ` +
      `† marks the question-translation source languages.`,
    "",
    "| protocol setting | value |",
    "|---|---|",
    ...Object.entries(r.protocol).map(([k, v]) => `| ${k.replaceAll("_", " ")} | ${v.replaceAll("|", "\\|")} |`),
    "",
    comparisonTable(rows, cfg.train),
    "Acc_l is the accuracy in one language, with its 95% Wilson score interval; Acc is the mean over languages.",
    "",
    "![accuracy per language](accuracy.svg)",
    "",
    ...(cfg.interp ? ["Logit Lens, PCA and the correlation with English of both models: [interp/](interp/) (SVG charts with their numbers).", ""] : []),
  ];
  const notes: string[] = [];
  for (const [label, results] of [["base", r.base], ["aligned", r.aligned]] as const) {
    const ties = results.reduce((s, x) => s + x.ties, 0);
    const truncated = results.reduce((s, x) => s + x.truncated.length, 0);
    const skipped = results.reduce((s, x) => s + x.skipped.length, 0);
    if (ties) notes.push(`- ${label}: ${ties} items had tied class scores (broken at random, seeded).`);
    if (truncated) notes.push(`- ${label}: ${truncated} prompts were longer than the context and lost tokens on the left (see results.json).`);
    if (skipped) notes.push(`- ${label}: ${skipped} invalid items were skipped (see results.json).`);
    const judged = results.filter((x) => x.judged.differ !== null);
    if (judged.length) {
      const differ = judged.reduce((s, x) => s + x.judged.differ!, 0);
      const where = judged.filter((x) => x.judged.differ! > 0).map((x) => `${x.lang} ${x.judged.differ}`);
      notes.push(
        `- ${label}: the index rule and the authors' rule judge ${differ} item(s) differently${where.length ? ` (${where.join(", ")})` : ""}; ` +
          `correct by index ${judged.reduce((s, x) => s + x.judged.index, 0)}, by the authors' check ${judged.reduce((s, x) => s + x.judged.authors!, 0)}.`,
      );
    }
  }
  if (t.truncated) notes.push(`- ${t.truncated} training pairs were truncated to ${cfg.training.maxLength} tokens.`);
  if (notes.length) lines.push("## Notes", "", ...notes, "");
  if (cfg.tiny) {
    const unchanged = rows.every((c) => c.aligned !== null && c.aligned.accuracy === c.base.accuracy);
    lines.push(
      "## This was the tiny random model",
      "",
      "The default checkpoint is a randomly initialised 2-layer model (src/model/tiny.ts) that exists to exercise the code: " +
        `it knows no language, so its accuracy is near chance (${(100 / task.classes.length).toFixed(1)}% for ${task.classes.length} classes) before and after alignment, ` +
        `${unchanged ? "and here alignment changed no prediction (every difference is 0.0: a random model's predictions hardly move with a small LoRA update)" : "and the differences above are noise"}. To reproduce the paper, run a real checkpoint (Qwen1.5-1.8B, Qwen2.5-0.5B or Mistral-7B, ` +
        "in Hugging Face layout) with the paper's settings (the paper protocol; LoRA on q_proj and v_proj, lr 5e-5, 3 epochs, batch 4 x 4, cosine schedule with 10% warmup):",
      "",
      "```sh",
      PAPER_COMMANDS[cfg.task],
      "```",
      "",
    );
  }
  const p = r.provenance;
  const ran = p ? `node ${p.node}, qalign ${p.qalign}${p.git ? ` (commit ${p.git.commit.slice(0, 12)}${p.git.dirty ? ", modified" : ""})` : ""}, device ${String(p.device.name)}, ` : "";
  lines.push(`Reproduce: ${ran}seed ${cfg.evaluation.seed ?? 0}; every number, the versions and the input files' hashes are in results.json.`, "");
  return lines.join("\n");
}
