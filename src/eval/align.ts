import { existsSync } from "node:fs";
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { toCsv } from "../interp/plot.ts";
import { interpret, writeInterpReport, type InterpReport } from "../interp/report.ts";
import { buildProbeSets } from "../interp/sets.ts";
import { DataError, encodePairs, splitPairs, type DataIssue, type QuestionPair } from "../lora/data.ts";
import { writeFileAtomic } from "../model/atomic.ts";
import { latestDir } from "../lora/files.ts";
import { applyLora } from "../lora/layer.ts";
import { loadAdapter } from "../lora/peft.ts";
import { train, type TrainResult } from "../lora/trainer.ts";
import type { LlamaModel } from "../model/llama.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { checkLanguages, evaluateLanguage, type EvalOptions, type LanguageResult } from "./evaluate.ts";
import { LANGUAGE_NAMES, type Lang } from "./languages.ts";
import { macroAverage } from "./metrics.ts";
import { questionPairs } from "./questions.ts";
import { comparisonTable, pct, resultRows, versions, writeAccuracyChart, type Comparison } from "./report.ts";
import type { DataSource } from "./source.ts";
import { TASKS, type TaskId } from "./tasks.ts";

/**
 * The experiment of the paper (Zhang et al. 2024, arXiv 2405.13816): evaluate a base model in every
 * language, LoRA-tune it only to translate questions from a few languages into the target
 * language, evaluate again, and report the change per language, the unseen languages included.
 *
 * Everything lands in one output folder, each piece written atomically as soon as it is done:
 *
 *     run.json               the settings; a rerun with other settings is refused
 *     base/<lang>.json       base-model result of each language
 *     adapter/               the trained PEFT adapter and training.json (built in training/,
 *                            which holds the trainer's resumable checkpoints, then renamed)
 *     aligned/<lang>.json    aligned-model result of each language
 *     interp/                with --interp: Logit Lens / PCA of both models
 *     results.json, results.csv, report.md, accuracy.svg (+ .json / .csv of its rows)
 *
 * A rerun with the same folder reads the finished pieces instead of recomputing them.
 */

/** Settings of the LoRA training (defaults: the paper's, via the trainer). */
export interface AlignTraining {
  /** Pairs kept in all (a seeded subset of the training languages' files); default all. */
  maxSamples?: number;
  epochs: number;
  lr: number;
  batchSize: number;
  gradAccum: number;
  /** Longest training pair in tokens. */
  maxLength: number;
  /** Share of pairs held out for the validation loss. */
  valSize: number;
  r: number;
  alpha: number;
  dropout: number;
  targetModules: string[];
}

export interface AlignConfig {
  /** The base checkpoint's folder. */
  modelDir: string;
  /** The model is the tiny random checkpoint: the report says its accuracy means nothing. */
  tiny: boolean;
  task: TaskId;
  /** Whose question files train the adapter (only snli has them in the release). */
  trainTask: TaskId;
  /** Question-translation source languages. */
  train: Lang[];
  /** The language questions are translated into (default en). */
  target: Lang;
  /** Evaluation languages. */
  langs: Lang[];
  evaluation: Pick<EvalOptions, "limit" | "shots" | "mode" | "englishLabels" | "seed" | "batchSize" | "maxLength">;
  training: AlignTraining;
  interp: boolean;
  out: string;
}

/** What training produced, as saved in adapter/training.json. */
export interface TrainingSummary {
  pairs: number;
  train: number;
  val: number;
  truncated: number;
  issues: DataIssue[];
  steps: number;
  history: TrainResult["history"];
  seconds: number;
}

export interface AlignResults {
  config: AlignConfig;
  versions: { node: string; qalign: string };
  data: string;
  base: LanguageResult[];
  aligned: LanguageResult[];
  training: TrainingSummary;
  /** Acc: the mean over languages, base and aligned. */
  average: { base: number; aligned: number };
  files: string[];
}

/** The only task whose question-translation files the release holds. */
export const QUESTION_TASK: TaskId = "snli";

/** Why `trainTask` cannot be trained on: the release has question files for snli only. */
export function trainTaskMessage(trainTask: TaskId): string {
  return (
    `question-translation files exist for snli only (snli/snli_<lang>10k_train_question.json for de es it sw zh); ` +
    `the paper's ${TASKS[trainTask].title} question files are not in the release, so --train-task ${trainTask} cannot be trained. ` +
    `Use --train-task snli (the default) to align on SNLI questions and evaluate --task ${trainTask}`
  );
}

/** The summary file written into the adapter folder once training is complete. */
const TRAINING_SUMMARY = "training.json";

/** Writes JSON atomically, creating its folder. */
async function saveJson(file: string, value: unknown): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  await writeFileAtomic(file, JSON.stringify(value, null, 1) + "\n");
}

async function readJson<T>(file: string): Promise<T> {
  return JSON.parse(await readFile(file, "utf8")) as T;
}

/**
 * The settings that decide the numbers: all but the languages list (each language is stored on
 * its own, so a rerun may add languages), the batch size and the interp switch.
 */
function fingerprint(cfg: AlignConfig, data: string): Record<string, unknown> {
  const { batchSize: _, ...evaluation } = cfg.evaluation;
  return { modelDir: cfg.modelDir, data, task: cfg.task, trainTask: cfg.trainTask, train: cfg.train, target: cfg.target, evaluation, training: cfg.training };
}

/** A JSON value as the run.json diff shows it; absent values read "unset". */
function shown(v: unknown): string {
  return v === undefined ? "unset" : JSON.stringify(v);
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The settings that differ between a saved run.json and this run, one entry per leaf, nested
 * keys joined by dots: `evaluation.limit was 20, now 10`. `now` is compared as JSON (undefined
 * fields are absent, as in the saved file).
 */
export function settingsDiff(saved: unknown, now: unknown, path = ""): string[] {
  return leafDiff(saved, now === undefined ? undefined : JSON.parse(JSON.stringify(now)), path);
}

/** settingsDiff on two parsed JSON values. */
function leafDiff(saved: unknown, current: unknown, path: string): string[] {
  if (isRecord(saved) && isRecord(current)) {
    const keys = [...new Set([...Object.keys(saved), ...Object.keys(current)])];
    return keys.flatMap((k) => leafDiff(saved[k], current[k], path ? `${path}.${k}` : k));
  }
  if (JSON.stringify(saved) === JSON.stringify(current)) return [];
  return [`${path || "settings"} was ${shown(saved)}, now ${shown(current)}`];
}

/**
 * Runs (or resumes) the experiment on `model`, which must carry no adapter yet.
 * @param log progress lines (stderr in the CLI)
 * @throws DataError when `out` holds a run with other settings, or for bad data; RangeError
 *   when the train task has no question files; CheckpointError for a bad saved adapter.
 */
export async function runAlign(model: LlamaModel, tokenizer: Tokenizer, source: DataSource, cfg: AlignConfig, log: (line: string) => void = () => {}): Promise<AlignResults> {
  const out = cfg.out;
  if (cfg.trainTask !== QUESTION_TASK) throw new RangeError(trainTaskMessage(cfg.trainTask));
  const settings = fingerprint(cfg, source.description);
  const runFile = join(out, "run.json");
  if (existsSync(runFile)) {
    const saved = await readJson<Record<string, unknown>>(runFile);
    // Only this version's settings count: a key that an older run.json has in addition is ignored.
    const differ = Object.keys(settings).flatMap((k) => settingsDiff(saved[k], settings[k], k));
    if (differ.length > 0) throw new DataError(runFile, `holds a run with other settings (${differ.join("; ")}); choose another --out or remove the folder`);
    log(`resuming ${out}`);
  }
  const task = TASKS[cfg.task];

  /** Each language's result: read from <out>/<label>/<lang>.json when saved, else computed and saved. */
  const evaluateAll = async (label: "base" | "aligned"): Promise<LanguageResult[]> => {
    const results: LanguageResult[] = [];
    for (const lang of cfg.langs) {
      const file = join(out, label, `${lang}.json`);
      if (existsSync(file)) {
        results.push(await readJson<LanguageResult>(file));
        continue;
      }
      const r = await evaluateLanguage({ model, tokenizer, source, task, options: cfg.evaluation, prompts }, lang);
      await saveJson(file, r);
      const notes = [r.ties ? `${r.ties} ties` : "", r.truncated.length ? `${r.truncated.length} truncated` : "", r.skipped.length ? `${r.skipped.length} skipped` : ""].filter(Boolean);
      log(`${label} ${lang}: ${pct(r.accuracy)}% of ${r.n} (${r.seconds.toFixed(1)} s, ${r.itemsPerSecond.toFixed(1)} items/s)${notes.length ? `; ${notes.join(", ")}` : ""}`);
      results.push(r);
    }
    return results;
  };

  /** Logit Lens / PCA of the current model, saved as interp/<label>.json. */
  const interpFile = (label: string) => join(out, "interp", `${label}.json`);
  const interpOf = async (label: "base" | "aligned"): Promise<InterpReport> => {
    if (existsSync(interpFile(label))) return readJson<InterpReport>(interpFile(label));
    const sets = await buildProbeSets(tokenizer, source, task, cfg.langs, { ...cfg.evaluation, maxLength: cfg.evaluation.maxLength ?? model.config.max_position_embeddings });
    const L = model.config.num_hidden_layers;
    const report = await interpret(model, tokenizer, sets, {
      label,
      lens: true,
      pcaLayers: [...new Set([0, Math.round(L / 2), L])],
      correlation: cfg.langs.includes("en"),
      batchSize: cfg.evaluation.batchSize,
    });
    await saveJson(interpFile(label), report);
    log(`interp ${label}: written ${interpFile(label)}`);
    return report;
  };

  // Read the training pairs and check every language's test data first: bad data should fail
  // before hours of evaluation (and before the folder is claimed for these settings).
  const trained = existsSync(join(out, "adapter", TRAINING_SUMMARY));
  const pairs = trained ? null : await questionPairs(source, cfg.train, cfg.target);
  const prompts = await checkLanguages(source, task, cfg.langs, cfg.evaluation);
  if (!existsSync(runFile)) await saveJson(runFile, settings);

  log(`base model: ${task.title} in ${cfg.langs.length} languages (${source.description})`);
  const base = await evaluateAll("base");
  const interpBase = cfg.interp ? await interpOf("base") : null;

  const training = pairs ? await trainAdapter(model, tokenizer, pairs, cfg, log) : await loadTrained(model, cfg, log);
  log(`aligned model: ${task.title} in ${cfg.langs.length} languages`);
  const aligned = await evaluateAll("aligned");
  const files: string[] = [];
  if (cfg.interp) {
    const reports = [interpBase!, await interpOf("aligned")];
    files.push(...(await writeInterpReport(join(out, "interp"), reports, `${task.title}, base vs aligned (${cfg.train.join("+")} -> ${cfg.target})`)));
  }

  const results: AlignResults = {
    config: cfg,
    versions: await versions(),
    data: source.description,
    base,
    aligned,
    training,
    average: { base: macroAverage(base.map((r) => r.accuracy)), aligned: macroAverage(aligned.map((r) => r.accuracy)) },
    files,
  };
  files.push(...(await writeReports(results)));
  return results;
}

/** Loads the adapter a previous run finished training (<out>/adapter) onto `model`. */
async function loadTrained(model: LlamaModel, cfg: AlignConfig, log: (line: string) => void): Promise<TrainingSummary> {
  const adapterDir = join(cfg.out, "adapter");
  await loadAdapter(model, adapterDir);
  log(`loaded the trained adapter from ${adapterDir}`);
  return readJson<TrainingSummary>(join(adapterDir, TRAINING_SUMMARY));
}

/**
 * Trains LoRA on `model` with the question pairs, in <out>/training (resuming the trainer's
 * checkpoint there, if any), and renames the folder to <out>/adapter once complete, so that an
 * adapter folder is always a finished one.
 */
async function trainAdapter(
  model: LlamaModel,
  tokenizer: Tokenizer,
  { pairs, issues }: { pairs: QuestionPair[]; issues: DataIssue[] },
  cfg: AlignConfig,
  log: (line: string) => void,
): Promise<TrainingSummary> {
  const started = performance.now();
  const t = cfg.training;
  const seed = cfg.evaluation.seed ?? 0;
  const split = splitPairs(pairs, { maxSamples: t.maxSamples, valSize: t.valSize, seed });
  const eosId = tokenizer.eosId ?? model.config.eos_token_id[0];
  if (eosId === undefined) throw new DataError(cfg.modelDir, "the model defines no eos token, which ends every training target");
  const trainSet = encodePairs(split.train, tokenizer, { eosId, maxLength: t.maxLength });
  const valSet = encodePairs(split.val, tokenizer, { eosId, maxLength: t.maxLength });
  log(`training: ${split.train.length} + ${split.val.length} validation question pairs, ${cfg.train.map((l) => LANGUAGE_NAMES[l]).join(" + ")} -> ${LANGUAGE_NAMES[cfg.target]}`);

  const adapter = applyLora(model, { target_modules: t.targetModules, r: t.r, lora_alpha: t.alpha, lora_dropout: t.dropout, seed });
  const trainingDir = join(cfg.out, "training");
  const result = await train(
    model,
    adapter,
    { train: trainSet.examples, val: valSet.examples },
    {
      epochs: t.epochs,
      lr: t.lr,
      batchSize: t.batchSize,
      gradAccum: t.gradAccum,
      seed,
      outDir: trainingDir,
      resume: latestDir(join(trainingDir, "checkpoint")) !== null,
      baseModel: cfg.modelDir,
      log: (line) => log(`  ${line}`),
    },
  );
  const summary: TrainingSummary = {
    pairs: pairs.length,
    train: split.train.length,
    val: split.val.length,
    truncated: trainSet.truncated + valSet.truncated,
    issues,
    steps: result.steps,
    history: result.history,
    seconds: (performance.now() - started) / 1000,
  };
  const adapterDir = join(cfg.out, "adapter");
  await writeFile(join(trainingDir, TRAINING_SUMMARY), JSON.stringify(summary, null, 1) + "\n");
  await rm(adapterDir, { recursive: true, force: true });
  await rename(trainingDir, adapterDir);
  log(`  adapter written to ${adapterDir}`);
  return summary;
}

/** results.json, results.csv, report.md and the chart; returns their paths. */
async function writeReports(r: AlignResults): Promise<string[]> {
  const { config: cfg } = r;
  const task = TASKS[cfg.task];
  const out = cfg.out;
  const rows: Comparison[] = r.base.map((b, i) => ({ lang: b.lang, base: b, aligned: r.aligned[i] ?? null }));
  const trainedName = `${cfg.train.join("+")} -> ${cfg.target}`;
  const shots = r.base[0]?.shots ?? task.shots;
  const items = [...new Set(r.base.map((b) => b.n))].join("/");
  const chart = await writeAccuracyChart(
    join(out, "accuracy.svg"),
    rows,
    cfg.train,
    `${task.title}: accuracy per language, base vs question-aligned (${trainedName})`,
    `${basename(cfg.modelDir)}, ${shots}-shot, ${cfg.evaluation.mode ?? "prefix"} scoring, ${items} items per language; lines: 95% Wilson intervals; dashed: chance`,
  );
  const csv = toCsv([...resultRows("base", r.base, cfg.train), ...resultRows("aligned", r.aligned, cfg.train)]);
  await writeFileAtomic(join(out, "results.csv"), csv);
  await writeFileAtomic(join(out, "results.json"), JSON.stringify(r, null, 1) + "\n");
  await writeFileAtomic(join(out, "report.md"), reportMarkdown(r, rows));
  return [join(out, "results.json"), join(out, "results.csv"), join(out, "report.md"), ...chart];
}

/** The command that reproduces the paper's setting on a real checkpoint. */
export const PAPER_COMMAND =
  "npm run qalign -- align --model ~/models/Qwen1.5-1.8B --task snli --english-labels --train zh,es --langs all " +
  "--epochs 3 --device webgpu --out runs/qwen1.5-1.8b-snli-zh+es";

/** report.md: what was run, the table, notes on ties / truncation / skipped items, the chart. */
function reportMarkdown(r: AlignResults, rows: readonly Comparison[]): string {
  const { config: cfg, training: t } = r;
  const task = TASKS[cfg.task];
  const ev = r.base[0];
  const lines = [
    `# Question alignment: ${task.title}, ${basename(cfg.modelDir)}`,
    "",
    `Base model \`${cfg.modelDir}\`, LoRA-tuned (r ${cfg.training.r}, alpha ${cfg.training.alpha}, on ${cfg.training.targetModules.join(", ")}) ` +
      `only to translate ${TASKS[cfg.trainTask].title} questions from ${cfg.train.map((l) => LANGUAGE_NAMES[l]).join(" and ")} into ${LANGUAGE_NAMES[cfg.target]}: ` +
      `${t.train} training pairs (+${t.val} for validation), ${cfg.training.epochs} epoch(s), ${t.steps} optimizer steps, lr ${cfg.training.lr}. ` +
      `Evaluated ${ev?.shots ?? task.shots}-shot in ${rows.length} languages with ${ev?.mode ?? "prefix"} scoring ` +
      `(${ev?.mode === "loglik" ? "log-likelihood of each whole label word" : "next-token probability of each label's prefix tokens, the paper's constrained decoding"}), ` +
      `label words ${cfg.evaluation.englishLabels ? "in English" : "in each language"}; data: ${r.data}. ` +
      `† marks the question-translation source languages.`,
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
  }
  if (t.truncated) notes.push(`- ${t.truncated} training pairs were truncated to ${cfg.training.maxLength} tokens.`);
  if (notes.length) lines.push("## Notes", "", ...notes, "");
  if (cfg.tiny) {
    lines.push(
      "## This was the tiny random model",
      "",
      "The default checkpoint is a randomly initialised 2-layer model (src/model/tiny.ts) that exists to exercise the code: " +
        `it knows no language, so its accuracy is near chance (${(100 / task.classes.length).toFixed(1)}% for ${task.classes.length} classes) before and after alignment, ` +
        "and the differences above are noise. To reproduce the paper, run a real checkpoint (Qwen1.5-1.8B, Qwen2.5-0.5B or Mistral-7B, " +
        "in Hugging Face layout) with the paper's settings (LoRA on q_proj and v_proj, lr 5e-5, 3 epochs, batch 4 x 4, cosine schedule with 10% warmup, " +
        "English label words for SNLI):",
      "",
      "```sh",
      PAPER_COMMAND,
      "```",
      "",
    );
  }
  lines.push(`Reproduce: node ${r.versions.node}, qalign ${r.versions.qalign}, seed ${cfg.evaluation.seed ?? 0}; every number is in results.json.`, "");
  return lines.join("\n");
}
