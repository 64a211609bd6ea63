import { existsSync } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { DataIssue } from "../io/data_error.ts";
import type { Provenance } from "../io/provenance.ts";
import { latestDir } from "../io/atomic_dir.ts";
import { interpret, writeInterpReport, type InterpReport } from "../interp/report.ts";
import { buildProbeSets } from "../interp/sets.ts";
import type { QuestionPair } from "../lora/data.ts";
import { loadAdapter } from "../lora/peft.ts";
import { trainOnPairs, type TrainingRecipe } from "../lora/recipe.ts";
import type { StepInfo } from "../lora/trainer.ts";
import type { LlamaModel } from "../model/llama.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { checkLanguages, evaluateLanguage, type LanguageResult } from "../eval/evaluate.ts";
import { LANGUAGE_NAMES, type Lang } from "../eval/languages.ts";
import { macroAverage } from "../eval/metrics.ts";
import { DEFAULT_PROTOCOL, protocolSettings } from "../eval/protocol.ts";
import { questionPairs } from "../eval/questions.ts";
import { pct } from "../eval/report.ts";
import type { DataSource } from "../eval/source.ts";
import { TASKS } from "../eval/tasks.ts";
import { QUESTION_TASK, trainTaskMessage, type AlignConfig, type AlignResults, type TrainingSummary } from "./config.ts";
import { checkSettings, fingerprint, readJson, runPaths, saveJson, TRAINING_SUMMARY } from "./folder.ts";
import { writeReports } from "./report.ts";

/**
 * The experiment of the paper (Zhang et al. 2024, arXiv 2405.13816): evaluate a base model in every
 * language, LoRA-tune it only to translate questions from a few languages into the target
 * language, evaluate again, and report the change per language, the unseen languages included.
 * Everything lands in one run folder (its layout and resume rules: folder.ts).
 */

/** How a run reports (the CLI draws it on stderr). */
export interface AlignHooks {
  /** Notices, one line each. */
  log?: (line: string) => void;
  /** Items done in one language of one stage; `what` is e.g. "base en", "aligned zh", "interp base en". */
  onItems?: (what: string, done: number, total: number) => void;
  /** The trainer's report after each optimizer step. */
  onStep?: (info: StepInfo) => void;
  /** The provenance results.json records, asked for when the run is finished. */
  provenance?: () => Promise<Provenance>;
}

/**
 * Runs (or resumes) the experiment on `model`, which must carry no adapter yet.
 * @param hooks notices and progress
 * @throws DataError when `out` holds a run with other settings, or for bad data; RangeError
 *   when the train task has no question files; CheckpointError for a bad saved adapter.
 */
export async function runAlign(model: LlamaModel, tokenizer: Tokenizer, source: DataSource, cfg: AlignConfig, hooks: AlignHooks = {}): Promise<AlignResults> {
  const log = hooks.log ?? (() => {});
  if (cfg.trainTask !== QUESTION_TASK) throw new RangeError(trainTaskMessage(cfg.trainTask));
  const paths = runPaths(cfg.out);
  const settings = fingerprint(cfg, source.description);
  const resuming = await checkSettings(paths.settings, settings);
  if (resuming) log(`resuming ${cfg.out}`);
  const task = TASKS[cfg.task];

  /** Each language's result: read from <out>/<label>/<lang>.json when saved, else computed and saved. */
  const evaluateAll = async (label: "base" | "aligned"): Promise<LanguageResult[]> => {
    const results: LanguageResult[] = [];
    for (const lang of cfg.langs) {
      const file = paths.result(label, lang);
      if (existsSync(file)) {
        results.push(await readJson<LanguageResult>(file));
        continue;
      }
      const options = { ...cfg.evaluation, onWarning: (l: Lang, w: string) => log(`eval ${l}: ${w}`), onProgress: (done: number, total: number) => hooks.onItems?.(`${label} ${lang}`, done, total) };
      const r = await evaluateLanguage({ model, tokenizer, source, task, options, prompts }, lang);
      await saveJson(file, r);
      const notes = [r.ties ? `${r.ties} ties` : "", r.truncated.length ? `${r.truncated.length} truncated` : "", r.skipped.length ? `${r.skipped.length} skipped` : ""].filter(Boolean);
      log(`${label} ${lang}: ${pct(r.accuracy)}% of ${r.n} (${r.seconds.toFixed(1)} s, ${r.itemsPerSecond.toFixed(1)} items/s)${notes.length ? `; ${notes.join(", ")}` : ""}`);
      results.push(r);
    }
    return results;
  };

  /** Logit Lens / PCA of the current model, saved as interp/<label>.json. */
  const interpOf = async (label: "base" | "aligned"): Promise<InterpReport> => {
    const file = paths.interp(label);
    if (existsSync(file)) return readJson<InterpReport>(file);
    const sets = await buildProbeSets(tokenizer, source, task, cfg.langs, { ...cfg.evaluation, maxLength: cfg.evaluation.maxLength ?? model.config.max_position_embeddings });
    const L = model.config.num_hidden_layers;
    const report = await interpret(model, tokenizer, sets, {
      label,
      lens: true,
      pcaLayers: [...new Set([0, Math.round(L / 2), L])],
      correlation: cfg.langs.includes("en"),
      batchSize: cfg.evaluation.batchSize,
      onProgress: (lang, done, total) => hooks.onItems?.(`interp ${label} ${lang}`, done, total),
    });
    await saveJson(file, report);
    log(`interp ${label}: written ${file}`);
    return report;
  };

  // Read the training pairs and check every language's test data first: bad data should fail
  // before hours of evaluation (and before the folder is claimed for these settings).
  const trained = await finishedAdapter(paths, log);
  const pairs = trained ? null : await questionPairs(source, cfg.train, cfg.target);
  const prompts = await checkLanguages(source, task, cfg.langs, cfg.evaluation);
  if (!resuming) await saveJson(paths.settings, settings);

  const ev = cfg.evaluation;
  log(`base model: ${task.title} in ${cfg.langs.length} languages (${source.description}); protocol ${ev.protocol ?? DEFAULT_PROTOCOL}, scoring ${ev.scoring ?? "index"}`);
  const base = await evaluateAll("base");
  const interpBase = cfg.interp ? await interpOf("base") : null;

  const training = pairs ? await trainAdapter(model, tokenizer, pairs, cfg, { ...hooks, log }) : await loadTrained(model, cfg, log);
  log(`aligned model: ${task.title} in ${cfg.langs.length} languages`);
  const aligned = await evaluateAll("aligned");
  const files: string[] = [];
  if (cfg.interp) {
    const reports = [interpBase!, await interpOf("aligned")];
    files.push(...(await writeInterpReport(paths.interpDir, reports, `${task.title}, base vs aligned (${cfg.train.join("+")} -> ${cfg.target})`)));
  }

  const results: AlignResults = {
    config: cfg,
    protocol: await protocolSettings(task, cfg.evaluation),
    provenance: (await hooks.provenance?.()) ?? null,
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
  const adapterDir = runPaths(cfg.out).adapter;
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
  { log, onStep }: AlignHooks & { log: (line: string) => void },
): Promise<TrainingSummary> {
  const started = performance.now();
  const paths = runPaths(cfg.out);
  const trainingDir = paths.training;
  const recipe: TrainingRecipe = { ...cfg.training, seed: cfg.evaluation.seed ?? 0 };
  const { data, result } = await trainOnPairs(model, tokenizer, pairs, recipe, {
    outDir: trainingDir,
    resume: latestDir(join(trainingDir, "checkpoint")) !== null,
    baseModel: cfg.modelDir,
    log: (line) => log(`  ${line}`),
    onStep,
    onData: (d) => log(`training: ${d.train} + ${d.val} validation question pairs, ${cfg.train.map((l) => LANGUAGE_NAMES[l]).join(" + ")} -> ${LANGUAGE_NAMES[cfg.target]}`),
  });
  const summary: TrainingSummary = {
    ...data,
    issues,
    steps: result.steps,
    history: result.history,
    seconds: (performance.now() - started) / 1000,
  };
  await saveJson(join(trainingDir, TRAINING_SUMMARY), summary);
  await moveIntoPlace(paths);
  log(`  adapter written to ${paths.adapter}`);
  return summary;
}

/** Renames the finished <out>/training to <out>/adapter, replacing any older adapter folder. */
async function moveIntoPlace(paths: ReturnType<typeof runPaths>): Promise<void> {
  await rm(paths.adapter, { recursive: true, force: true });
  await rename(paths.training, paths.adapter);
}

/**
 * Whether <out>/adapter holds a finished training. A run stopped after training wrote
 * training/training.json (the last file of a finished training) but before the folder was
 * renamed has a complete adapter in training/: it is moved into place instead of retrained.
 */
async function finishedAdapter(paths: ReturnType<typeof runPaths>, log: (line: string) => void): Promise<boolean> {
  if (existsSync(join(paths.adapter, TRAINING_SUMMARY))) return true;
  if (!existsSync(join(paths.training, TRAINING_SUMMARY))) return false;
  await moveIntoPlace(paths);
  log(`training had finished in ${paths.training}: moved it to ${paths.adapter}`);
  return true;
}
