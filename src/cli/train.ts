import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";
import { formatIssue } from "../io/data_error.ts";
import { readQuestionPairs } from "../lora/data.ts";
import { isLoraDropout, LORA_DEFAULTS, LORA_DROPOUT_RANGE, LORA_MODULES } from "../lora/layer.ts";
import { RECIPE_DEFAULTS, trainOnPairs, type TrainingRecipe } from "../lora/recipe.ts";
import { CHECKPOINT_DIR, TRAIN_DEFAULTS, type StepInfo, type TrainOptions } from "../lora/trainer.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE } from "../lora/peft.ts";
import type { AlignTraining } from "../align/config.ts";
import { checkSettings, decidingTraining, readJson, saveJson, TRAINING_SUMMARY } from "../align/folder.ts";
import { CliError, deviceOption, int, listOption, modelOption, num, type OptionTable, type Values } from "./args.ts";
import { checkLoraRank, checkMaxLength, loadForCli, trainingUsage } from "./model.ts";
import { Progress, quietOption } from "./progress.ts";
import { provenance } from "./provenance.ts";
import { prepareOutDir, previousRunFiles, removeEntries } from "./output.ts";

/** Where train records its provenance, beside the adapter's files. */
const PROVENANCE_FILE = "provenance.json";

/**
 * What train writes into --out: the PEFT adapter, its provenance, the trainer's checkpoint
 * while it runs, and last TRAINING_SUMMARY (the settings and the result), whose presence marks
 * a finished adapter.
 */
const TRAIN_ENTRIES = [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PROVENANCE_FILE, TRAINING_SUMMARY, CHECKPOINT_DIR];

/** What TRAINING_SUMMARY holds: train's settings and its result. */
const TRAIN_SUMMARY_KIND = { what: "a train run's summary", keys: ["modelDir", "data", "result"] } as const;

/** The result line train prints, also kept in TRAINING_SUMMARY for a rerun to print. */
interface TrainOutcome {
  adapter: string;
  steps: number;
  val_loss: number | null;
}

/** Malformed items listed one per line before this many are summarised. */
const MAX_ISSUE_LINES = 20;

/**
 * The LoRA and trainer options, shared by `qalign train` and `qalign align`, under PEFT's names
 * (target_modules, r, lora_alpha, lora_dropout) and HF Trainer's meanings.
 */
export const TRAINING_OPTIONS = {
  "target-modules": {
    type: "string",
    arg: "q_proj,v_proj|all-linear",
    help: `PEFT target_modules: the Linear layers that get LoRA, comma-separated names among ${LORA_MODULES.join(" ")}, or all-linear`,
    default: (LORA_DEFAULTS.target_modules as string[]).join(","),
  },
  r: { type: "string", arg: "N", help: "PEFT r: the rank of the LoRA update, at most min(in_features, out_features) of each targeted layer", default: String(LORA_DEFAULTS.r) },
  "lora-alpha": { type: "string", arg: "A", help: "PEFT lora_alpha: the update is scaled by lora_alpha / r", default: String(LORA_DEFAULTS.lora_alpha), was: ["alpha"] },
  "lora-dropout": {
    type: "string",
    arg: "P",
    help: `PEFT lora_dropout: dropout probability on the LoRA branch's input while training, in ${LORA_DROPOUT_RANGE}`,
    default: String(LORA_DEFAULTS.lora_dropout),
    was: ["dropout"],
  },
  lr: { type: "string", arg: "LR", help: "peak learning rate of AdamW (cosine schedule after a linear warmup over the first 10% of steps)", default: String(TRAIN_DEFAULTS.lr) },
  epochs: { type: "string", arg: "E", help: "passes over the training pairs", default: String(TRAIN_DEFAULTS.epochs) },
  "batch-size": { type: "string", arg: "B", help: "training pairs per forward/backward pass (the micro-batch)", default: String(TRAIN_DEFAULTS.batchSize) },
  "grad-accum": { type: "string", arg: "K", help: "micro-batches per optimizer step: the effective batch is batch-size x grad-accum", default: String(TRAIN_DEFAULTS.gradAccum) },
  "max-train-samples": { type: "string", arg: "N", help: "question pairs kept in all (a seeded subset, validation included)", default: "all pairs", was: ["max-samples"] },
  "max-length": { type: "string", arg: "N", help: "longest training pair in tokens, prompt and target (longer ones are truncated)", default: String(RECIPE_DEFAULTS.maxLength) },
  "val-size": { type: "string", arg: "F", help: "share of the pairs held out for the validation loss, in [0, 0.5]", default: String(RECIPE_DEFAULTS.valSize) },
  "save-steps": { type: "string", arg: "N", help: "write a resumable checkpoint every N optimizer steps", default: String(TRAIN_DEFAULTS.saveSteps) },
  "gradient-checkpointing": { type: "boolean", help: "recompute each decoder layer's activations in backward instead of keeping them: less memory, a second forward, the same gradients" },
} as const satisfies OptionTable;

/** Defaults a command puts in place of the paper's (align's tiny demo). */
export type RecipeFallback = Partial<Pick<TrainOptions, "lr" | "epochs" | "batchSize" | "gradAccum">> & { maxSamples?: number };

/**
 * Above this peak learning rate a warning is printed: AdamW's step moves each weight by about lr
 * (its update m / sqrt(v) has magnitude ~1), so lr > 1 moves a weight by more than its typical
 * size in one step (LoRA recipes use 1e-5 to 1e-3); it is allowed, for experiments.
 */
const LR_WARN_ABOVE = 1;

/** --lora-dropout, in LORA_DROPOUT_RANGE (that of adapter_config.json), or its default. @throws CliError naming the range */
function loraDropout(command: string, v: Values<typeof TRAINING_OPTIONS>): number {
  const p = num(command, v, "lora-dropout", LORA_DEFAULTS.lora_dropout);
  if (!isLoraDropout(p)) throw new CliError(`${command}: --lora-dropout must be a number in ${LORA_DROPOUT_RANGE}, got "${v["lora-dropout"]}"`);
  return p;
}

/**
 * The training recipe of TRAINING_OPTIONS' values, `fallback` standing in for the defaults it
 * names; warns on stderr for a --lr above 1. @throws CliError for a value outside its bounds.
 */
export function trainingRecipe(command: string, v: Values<typeof TRAINING_OPTIONS>, seed: number, fallback: RecipeFallback = {}): TrainingRecipe & { hyper: AlignTraining["hyper"] } {
  const targets = v["target-modules"] ?? (LORA_DEFAULTS.target_modules as string[]).join(",");
  const lr = num(command, v, "lr", fallback.lr ?? TRAIN_DEFAULTS.lr, 0, Infinity, true); // (0, inf): lr 0 trains nothing
  if (lr > LR_WARN_ABOVE) process.stderr.write(`${command}: warning: --lr ${v.lr ?? lr} is above ${LR_WARN_ABOVE}: AdamW moves each weight by about lr a step (LoRA recipes use 1e-5 to 1e-3)\n`);
  const maxSamples = v["max-train-samples"] !== undefined || fallback.maxSamples !== undefined ? int(command, v, "max-train-samples", fallback.maxSamples ?? 0, 1) : undefined;
  return {
    lora: {
      // PEFT's "all-linear" is a string; a list is comma-separated names.
      target_modules: targets === "all-linear" ? targets : listOption(command, "target-modules", targets),
      r: int(command, v, "r", LORA_DEFAULTS.r, 1),
      lora_alpha: num(command, v, "lora-alpha", LORA_DEFAULTS.lora_alpha, 0, Infinity, true),
      lora_dropout: loraDropout(command, v),
    },
    ...(maxSamples !== undefined ? { maxSamples } : {}),
    valSize: num(command, v, "val-size", RECIPE_DEFAULTS.valSize, 0, 0.5),
    maxLength: int(command, v, "max-length", RECIPE_DEFAULTS.maxLength, 2),
    seed,
    hyper: {
      lr,
      epochs: int(command, v, "epochs", fallback.epochs ?? TRAIN_DEFAULTS.epochs, 1),
      batchSize: int(command, v, "batch-size", fallback.batchSize ?? TRAIN_DEFAULTS.batchSize, 1),
      gradAccum: int(command, v, "grad-accum", fallback.gradAccum ?? TRAIN_DEFAULTS.gradAccum, 1),
      saveSteps: int(command, v, "save-steps", TRAIN_DEFAULTS.saveSteps, 1),
      gradientCheckpointing: v["gradient-checkpointing"] === true,
    },
  };
}

/**
 * The trainer's onStep drawn as a progress task "training": steps, steps/s, ETA, and the step's
 * loss, learning rate and tokens per second.
 */
export function trainingProgress(progress: Progress): (info: StepInfo) => void {
  const count = progress.counter("training", "steps");
  return (info) => count(info.step, info.totalSteps, `epoch ${info.epoch.toFixed(2)} | loss ${info.loss.toFixed(4)} | lr ${info.lr.toExponential(2)} | ${Math.round(info.tokensPerSecond)} tok/s`);
}

export const options = {
  ...modelOption,
  data: { type: "string", arg: "FILE[,FILE...]", required: true, help: "question-translation files: JSON arrays of {input, answer} items" },
  out: { type: "string", arg: "DIR", required: true, help: "where the PEFT adapter (and the resumable checkpoint/) is written" },
  ...TRAINING_OPTIONS,
  seed: { type: "string", arg: "S", help: "seeds lora_A's initialisation, the validation split, each epoch's order and the dropout masks", default: String(TRAIN_DEFAULTS.seed) },
  strict: { type: "boolean", help: "fail on the first malformed item instead of skipping it with a notice" },
  resume: { type: "boolean", conflicts: ["overwrite"], help: "continue from <out>/checkpoint/ (bit for bit) instead of starting afresh; a finished adapter with the same settings is kept as it is" },
  overwrite: { type: "boolean", help: "train afresh even where --out holds a finished adapter, replacing it" },
  ...deviceOption,
  ...quietOption,
} as const satisfies OptionTable;

/**
 * `qalign train --model DIR --data FILE[,FILE...] --out DIR [options]`: LoRA question alignment
 * (Zhang et al. 2024). Progress goes to stderr; on success one JSON line on stdout:
 * {"adapter": DIR, "steps": n, "val_loss": x | null}.
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const modelDir = v.model;
  const files = listOption("train", "data", v.data, (f) => resolve(f));
  if (files.length === 0) throw new CliError("train: --data names no file");
  const out = v.out;
  const progress = new Progress({ quiet: v.quiet });
  const say = (line: string) => progress.say(line);
  // Every number, and the data, is checked before the (slow) model load.
  const recipe = trainingRecipe("train", v, int("train", v, "seed", TRAIN_DEFAULTS.seed));

  const started = new Date();
  await checkMaxLength("train", modelDir, recipe.maxLength);
  await checkLoraRank("train", modelDir, recipe.lora);
  const { pairs, issues } = await readQuestionPairs(files, { strict: v.strict });
  await prepareOutDir("train", out);
  const settings = { modelDir, data: files, strict: v.strict === true, ...decidingTraining(recipe) };
  const found = await previousRunFiles("train", out, TRAIN_ENTRIES);
  const summaryFile = join(out, TRAINING_SUMMARY);
  if (v.overwrite) {
    await removeEntries(out, found);
    if (found.length > 0) say(`train: removed the earlier run in ${out} (--overwrite)`);
  } else if (existsSync(summaryFile)) {
    if (!v.resume) throw new CliError(`train: --out ${out} holds a finished adapter (${TRAINING_SUMMARY}, ${ADAPTER_WEIGHTS_FILE}); pass --resume to keep it, --overwrite to train it again, or choose another --out`);
    await checkSettings(summaryFile, settings, TRAIN_SUMMARY_KIND);
    say(`train: ${out} holds a finished adapter with these settings already; nothing to train`);
    process.stdout.write(JSON.stringify((await readJson<{ result: TrainOutcome }>(summaryFile)).result) + "\n");
    return;
  } else if (found.includes(ADAPTER_WEIGHTS_FILE) && !found.includes(CHECKPOINT_DIR)) {
    throw new CliError(`train: --out ${out} holds an adapter (${ADAPTER_WEIGHTS_FILE}) but no ${TRAINING_SUMMARY} of its settings; pass --overwrite to train it again, or choose another --out`);
  }
  for (const issue of issues.slice(0, MAX_ISSUE_LINES)) say(`skipped: ${formatIssue(issue)}`);
  if (issues.length > MAX_ISSUE_LINES) say(`skipped ${issues.length - MAX_ISSUE_LINES} more malformed items`);
  const tokenizer = await loadTokenizer(modelDir);
  if (!tokenizer) throw new CliError(`train: ${modelDir} has no tokenizer.json, which training needs to read text`);
  const model = await loadForCli("train", v, progress, trainingUsage(recipe));
  const { result } = await trainOnPairs(model, tokenizer, pairs, recipe, {
    outDir: out,
    resume: v.resume,
    baseModel: modelDir,
    log: say,
    onStep: trainingProgress(progress),
    onData: (d) => {
      say(`${d.pairs} pairs from ${files.length} file(s); ${d.train} train, ${d.val} validation`);
      if (d.truncated > 0) say(`truncated ${d.truncated} pair(s) longer than --max-length ${recipe.maxLength} tokens`);
    },
  });
  const record = await provenance({ started, finished: new Date(), device: model.device, modelDir, dtype: v.dtype, files });
  await writeFileAtomic(join(out, PROVENANCE_FILE), JSON.stringify(record, null, 1) + "\n");
  const outcome: TrainOutcome = { adapter: out, steps: result.steps, val_loss: result.history.val.at(-1)?.loss ?? null };
  await saveJson(summaryFile, { ...settings, result: outcome });
  say(`adapter written to ${out}`);
  process.stdout.write(JSON.stringify(outcome) + "\n");
}
