import type { DataIssue } from "../io/data_error.ts";
import { copyFile, hostFiles, type Files } from "../io/files.ts";
import type { Provenance } from "../io/provenance.ts";
import { interpret, writeInterpReport, type InterpReport } from "../interp/report.ts";
import { buildProbeSets } from "../interp/sets.ts";
import type { QuestionPair } from "../lora/data.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, loadAdapter } from "../lora/peft.ts";
import { trainOnPairs, type TrainingRecipe } from "../lora/recipe.ts";
import { CHECKPOINT_DIR, type StepInfo } from "../lora/trainer.ts";
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
import { ALIGN_SETTINGS, checkSettings, fingerprint, readJson, runPaths, saveJson, TRAINING_SUMMARY, type RunPaths } from "./folder.ts";
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
 * @param files where the run folder `cfg.out` is (default: the host's, io/files.ts)
 * @throws DataError when `out` holds a run with other settings, or for bad data; RangeError
 *   when the train task has no question files; CheckpointError for a bad saved adapter.
 */
export async function runAlign(
  model: LlamaModel,
  tokenizer: Tokenizer,
  source: DataSource,
  cfg: AlignConfig,
  hooks: AlignHooks = {},
  files?: Files,
): Promise<AlignResults> {
  const log = hooks.log ?? (() => {});
  if (cfg.trainTask !== QUESTION_TASK) throw new RangeError(trainTaskMessage(cfg.trainTask));
  const host = files ?? (await hostFiles());
  const paths = await runPaths(cfg.out, host);
  const settings = fingerprint(cfg, source.description);
  const resuming = await checkSettings(paths.settings, settings, ALIGN_SETTINGS, host);
  if (resuming) log(`resuming ${cfg.out}`);
  const task = TASKS[cfg.task];

  /** Each language's result: read from <out>/<label>/<lang>.json when saved, else computed and saved. */
  const evaluateAll = async (label: "base" | "aligned"): Promise<LanguageResult[]> => {
    const results: LanguageResult[] = [];
    for (const lang of cfg.langs) {
      const file = paths.result(label, lang);
      if (await host.exists(file)) {
        results.push(await readJson<LanguageResult>(file, host));
        continue;
      }
      const options = { ...cfg.evaluation, onWarning: (l: Lang, w: string) => log(`eval ${l}: ${w}`), onProgress: (done: number, total: number) => hooks.onItems?.(`${label} ${lang}`, done, total) };
      const r = await evaluateLanguage({ model, tokenizer, source, task, options, prompts }, lang);
      await saveJson(file, r, host);
      const notes = [r.ties ? `${r.ties} ties` : "", r.truncated.length ? `${r.truncated.length} truncated` : "", r.skipped.length ? `${r.skipped.length} skipped` : ""].filter(Boolean);
      log(`${label} ${lang}: ${pct(r.accuracy)}% of ${r.n} (${r.seconds.toFixed(1)} s, ${r.itemsPerSecond.toFixed(1)} items/s)${notes.length ? `; ${notes.join(", ")}` : ""}`);
      results.push(r);
    }
    return results;
  };

  /** Logit Lens / PCA of the current model, saved as interp/<label>.json. */
  const interpOf = async (label: "base" | "aligned"): Promise<InterpReport> => {
    const file = paths.interp(label);
    if (await host.exists(file)) return readJson<InterpReport>(file, host);
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
    await saveJson(file, report, host);
    log(`interp ${label}: written ${file}`);
    return report;
  };

  // Read the training pairs and check every language's test data first: bad data should fail
  // before hours of evaluation (and before the folder is claimed for these settings).
  const trained = await finishedAdapter(paths, host, log);
  const pairs = trained === null ? await questionPairs(source, cfg.train, cfg.target) : null;
  const prompts = await checkLanguages(source, task, cfg.langs, cfg.evaluation);
  if (!resuming) await saveJson(paths.settings, settings, host);

  const ev = cfg.evaluation;
  log(`base model: ${task.title} in ${cfg.langs.length} languages (${source.description}); protocol ${ev.protocol ?? DEFAULT_PROTOCOL}, scoring ${ev.scoring ?? "index"}`);
  const base = await evaluateAll("base");
  const interpBase = cfg.interp ? await interpOf("base") : null;

  const training = trained === null ? await trainAdapter(model, tokenizer, pairs!, cfg, { ...hooks, log }, host) : await loadTrained(model, trained, host, log);
  log(`aligned model: ${task.title} in ${cfg.langs.length} languages`);
  const aligned = await evaluateAll("aligned");
  const written: string[] = [];
  if (cfg.interp) {
    const reports = [interpBase!, await interpOf("aligned")];
    written.push(...(await writeInterpReport(paths.interpDir, reports, `${task.title}, base vs aligned (${cfg.train.join("+")} -> ${cfg.target})`, undefined, undefined, host)));
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
    files: written,
  };
  written.push(...(await writeReports(results, host)));
  return results;
}

/** Loads the adapter a previous run finished training (`adapterDir`: <out>/adapter, see {@link finishedAdapter}) onto `model`. */
async function loadTrained(model: LlamaModel, adapterDir: string, files: Files, log: (line: string) => void): Promise<TrainingSummary> {
  await loadAdapter(model, adapterDir, files);
  log(`loaded the trained adapter from ${adapterDir}`);
  return readJson<TrainingSummary>(files.join(adapterDir, TRAINING_SUMMARY), files);
}

/**
 * Trains LoRA on `model` with the question pairs, in <out>/training (resuming the trainer's
 * checkpoint there, if any), and makes <out>/adapter of it once complete, so that an adapter
 * folder is always a finished one.
 */
async function trainAdapter(
  model: LlamaModel,
  tokenizer: Tokenizer,
  { pairs, issues }: { pairs: QuestionPair[]; issues: DataIssue[] },
  cfg: AlignConfig,
  { log, onStep }: AlignHooks & { log: (line: string) => void },
  files: Files,
): Promise<TrainingSummary> {
  const started = performance.now();
  const paths = await runPaths(cfg.out, files);
  const trainingDir = paths.training;
  const recipe: TrainingRecipe = { ...cfg.training, seed: cfg.evaluation.seed ?? 0 };
  const { data, result } = await trainOnPairs(model, tokenizer, pairs, recipe, {
    outDir: trainingDir,
    resume: (await files.latestDir(files.join(trainingDir, CHECKPOINT_DIR))) !== null,
    files,
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
  await saveJson(files.join(trainingDir, TRAINING_SUMMARY), summary, files);
  await moveIntoPlace(paths, files);
  log(`  adapter written to ${paths.adapter}`);
  return summary;
}

/** The files of a finished training folder, which <out>/adapter holds. */
const ADAPTER_FOLDER = [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, TRAINING_SUMMARY];

/**
 * Makes <out>/adapter of the finished <out>/training as a whole (Files.replaceDir: a folder
 * cannot be renamed on every host), replacing any older adapter folder, then removes training/.
 * A stop in between leaves both, and {@link finishedAdapter} takes the adapter.
 */
async function moveIntoPlace(paths: RunPaths, files: Files): Promise<void> {
  await files.replaceDir(paths.adapter, async (tmp) => {
    for (const name of ADAPTER_FOLDER) await copyFile(files, files.join(paths.training, name), files.join(tmp, name));
  });
  await files.remove(paths.training);
}

/**
 * The folder of a finished training's adapter: <out>/adapter (or, where a stop mid-replace left
 * it, the complete copy Files.latestDir names), or null when training has not finished. A run
 * stopped after training wrote training/training.json (the last file of a finished training)
 * but before the adapter folder was made has a complete adapter in training/: it is moved into
 * place instead of retrained.
 */
async function finishedAdapter(paths: RunPaths, files: Files, log: (line: string) => void): Promise<string | null> {
  const adapter = await files.latestDir(paths.adapter);
  if (adapter !== null && (await files.exists(files.join(adapter, TRAINING_SUMMARY)))) return adapter;
  if (!(await files.exists(files.join(paths.training, TRAINING_SUMMARY)))) return null;
  await moveIntoPlace(paths, files);
  log(`training had finished in ${paths.training}: moved it to ${paths.adapter}`);
  return paths.adapter;
}
