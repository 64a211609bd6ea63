import { basename, join } from "node:path";
import { QUESTION_TASK, trainTaskMessage, type AlignConfig } from "../align/config.ts";
import { ALIGN_SETTINGS, checkSettings, fingerprint, RUN_ENTRIES, RUN_SETTINGS } from "../align/folder.ts";
import { comparisons, comparisonTable } from "../align/report.ts";
import { runAlign } from "../align/run.ts";
import { resolveDataSource } from "../eval/default_data.ts";
import type { Lang } from "../eval/languages.ts";
import { sourceLanguages } from "../eval/questions.ts";
import { RecordingSource, type DataSource } from "../eval/source.ts";
import { ensureTinyModel } from "../model/tiny.ts";
import { CliError, modelOption, type OptionTable, type Values } from "./args.ts";
import { EVAL_OPTIONS, evalOptions, langsOption, taskOption, tokenizerFor } from "./eval.ts";
import { checkLoraRank, checkMaxLength, loadForCli, trainingUsage } from "./model.ts";
import { prepareOutDir, previousRunFiles } from "./output.ts";
import { Progress } from "./progress.ts";
import { provenance } from "./provenance.ts";
import { TRAINING_OPTIONS, trainingProgress, trainingRecipe, type RecipeFallback } from "./train.ts";

/**
 * Limits of the embedded default (`npm start`: no --model, so the tiny random checkpoint):
 * small enough to finish in a few minutes on a 2-core laptop, large enough to run every stage
 * in all 20 languages. Training takes small optimizer steps (batch 4, no accumulation) at a
 * higher learning rate than the paper's 5e-5, so that a handful of pairs (the built-in sample
 * has 12 per source pair) still moves the adapter away from its zero start.
 */
export const TINY_DEFAULTS = { limit: 12, maxSamples: 48, epochs: 2, lr: 1e-3, batchSize: 4, gradAccum: 1 } as const satisfies RecipeFallback & { limit: number };

const { was: _, ...evalBatchSize } = EVAL_OPTIONS["eval-batch-size"];
const { was: __, ...evalMaxLength } = EVAL_OPTIONS["eval-max-length"];

export const options = {
  model: {
    ...modelOption.model,
    required: false,
    default: `the tiny random checkpoint, with --limit ${TINY_DEFAULTS.limit}, --max-train-samples ${TINY_DEFAULTS.maxSamples}, --epochs ${TINY_DEFAULTS.epochs}, --lr ${TINY_DEFAULTS.lr}, --batch-size ${TINY_DEFAULTS.batchSize}, --grad-accum ${TINY_DEFAULTS.gradAccum} (a demo)`,
  },
  dtype: modelOption.dtype,
  "quantize-embeddings": modelOption["quantize-embeddings"],
  train: { type: "string", arg: "zh,es", help: "question-translation source languages, comma-separated (any of de en es it sw zh), or all (every language with a question file in --data, and en when --target is another)", default: "zh,es" },
  target: { type: "string", arg: "LANG", help: "the language questions are translated into", default: "en" },
  "train-task": { type: "string", arg: "snli", help: "whose question files train the adapter (only snli has them in the release)", default: QUESTION_TASK },
  out: { type: "string", arg: "DIR", help: "the run folder (results, report, adapter); a rerun with the same folder resumes", default: "runs/align-<model>-<task>-<train>-<target>" },
  interp: { type: "boolean", help: "also run Logit Lens and PCA on both models (interp/)" },
  ...EVAL_OPTIONS,
  seed: { ...EVAL_OPTIONS.seed, help: "seeds the demonstrations, the --limit subset, lora_A's initialisation, the validation split and the training order" },
  // In align, --batch-size and --max-length are the training's (as in qalign train).
  "eval-batch-size": evalBatchSize,
  "eval-max-length": evalMaxLength,
  ...TRAINING_OPTIONS,
} as const satisfies OptionTable;

/**
 * --train: comma-separated languages (default zh,es), or all: every language `source` has
 * question files for into `target` (src/eval/questions.ts `sourceLanguages`).
 * @throws CliError for an unknown code, or for all when `source` has no question file
 */
async function trainLangs(text: string | undefined, target: Lang, source: DataSource): Promise<Lang[]> {
  if (text?.trim() !== "all") return langsOption("align", { train: text }, "train", "zh,es");
  const langs = await sourceLanguages(source, target);
  if (langs.length === 0) throw new CliError(`align: --train all: ${source.description} has no question-translation file into "${target}"`);
  return langs;
}

/**
 * `qalign align [options]`: evaluates the base model, LoRA-tunes it on question translation
 * only, evaluates the aligned model, and writes results.json, results.csv, report.md and a chart
 * to --out (see src/align/); the comparison table goes to stdout, progress to stderr. A
 * rerun with the same --out resumes. Without --model it runs the embedded default: the tiny
 * random checkpoint on small limits (TINY_DEFAULTS).
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const progress = new Progress({ quiet: v.quiet });
  const say = (line: string) => progress.say(line);
  const tiny = typeof v.model !== "string";
  const modelDir = tiny ? await ensureTinyModel() : (v.model as string);
  if (tiny) say(`align: no --model, so the tiny random checkpoint (${modelDir}) on small limits: expect chance-level accuracy`);
  const task = taskOption("align", v);
  const trainTask = taskOption("align", v, "train-task", QUESTION_TASK);
  if (trainTask.id !== QUESTION_TASK) throw new CliError(`align: ${trainTaskMessage(trainTask.id)}`);
  const targets = langsOption("align", v, "target", "en");
  if (targets.length !== 1) throw new CliError("align: --target takes one language");
  const target = targets[0]!;
  const started = new Date();
  const source = new RecordingSource(await resolveDataSource(v.data));
  const train = await trainLangs(v.train, target, source);
  for (const name of ["batch-size", "max-length"] as const) {
    if (v[name] !== undefined) say(`align: --${name} is the training's (as in qalign train); the evaluation's is --eval-${name}`);
  }
  const evaluation = evalOptions("align", v, task, tiny ? TINY_DEFAULTS.limit : undefined);
  const { seed: _seed, ...training } = trainingRecipe("align", v, evaluation.seed ?? 0, tiny ? TINY_DEFAULTS : {});
  const cfg: AlignConfig = {
    modelDir,
    tiny,
    task: task.id,
    trainTask: trainTask.id,
    train,
    target,
    langs: langsOption("align", v, "langs", "all"),
    evaluation,
    training,
    interp: v.interp,
    out: typeof v.out === "string" ? v.out : join("runs", `align-${tiny ? "tiny" : basename(modelDir)}-${task.id}-${train.join("+")}-${target}`),
  };
  await checkMaxLength("align", modelDir, cfg.training.maxLength);
  await checkMaxLength("align", modelDir, cfg.evaluation.maxLength, "eval-max-length");
  await checkLoraRank("align", modelDir, cfg.training.lora);
  const tokenizer = await tokenizerFor("align", modelDir);
  await prepareOutDir("align", cfg.out);
  // The folder is checked before the (slow) model load: it holds this run or none.
  await previousRunFiles("align", cfg.out, RUN_ENTRIES, RUN_SETTINGS);
  await checkSettings(join(cfg.out, RUN_SETTINGS), fingerprint(cfg, source.description), ALIGN_SETTINGS);
  // The plan is training's: it keeps every layer's activations for backward, evaluation one layer's.
  const model = await loadForCli("align", { ...v, model: modelDir }, progress, trainingUsage(cfg.training));
  const r = await runAlign(model, tokenizer, source, cfg, {
    log: say,
    onItems: progress.counters("items"),
    onStep: trainingProgress(progress),
    provenance: () => provenance({ started, finished: new Date(), device: model.device, modelDir, dtype: v.dtype, adapterDir: join(cfg.out, "adapter"), source }),
  });
  model.dispose();
  process.stdout.write(comparisonTable(comparisons(r), cfg.train));
  say(`align: done in ${((Date.now() - started.getTime()) / 1000).toFixed(0)} s; report ${join(cfg.out, "report.md")}`);
}
