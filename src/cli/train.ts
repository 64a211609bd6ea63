import { formatIssue } from "../io/data_error.ts";
import { readQuestionPairs } from "../lora/data.ts";
import { LORA_DEFAULTS } from "../lora/layer.ts";
import { trainOnPairs, type TrainingRecipe } from "../lora/recipe.ts";
import { TRAIN_DEFAULTS } from "../lora/trainer.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { CliError, deviceOption, int, num, parse, required } from "./args.ts";
import { loadForCli } from "./model.ts";
import { prepareOutDir } from "./output.ts";

/** Malformed items listed one per line before this many are summarised. */
const MAX_ISSUE_LINES = 20;

/**
 * `qalign train --model DIR --data FILE[,FILE...] --out DIR [options]`: LoRA question alignment
 * (Zhang et al. 2024). Progress goes to stderr; on success one JSON line on stdout:
 * {"adapter": DIR, "steps": n, "val_loss": x | null}.
 */
export async function run(args: string[]): Promise<void> {
  const v = parse("train", args, {
    model: { type: "string" },
    data: { type: "string" },
    out: { type: "string" },
    "target-modules": { type: "string" },
    r: { type: "string" },
    alpha: { type: "string" },
    dropout: { type: "string" },
    lr: { type: "string" },
    epochs: { type: "string" },
    "batch-size": { type: "string" },
    "grad-accum": { type: "string" },
    "max-samples": { type: "string" },
    "max-length": { type: "string" },
    "val-size": { type: "string" },
    "save-steps": { type: "string" },
    seed: { type: "string" },
    strict: { type: "boolean", default: false },
    resume: { type: "boolean", default: false },
    ...deviceOption,
  });
  const modelDir = required("train", v, "model");
  const files = required("train", v, "data").split(",").map((f) => f.trim()).filter((f) => f !== "");
  if (files.length === 0) throw new CliError("train: --data names no file");
  const out = required("train", v, "out");
  const seed = int("train", v, "seed", TRAIN_DEFAULTS.seed);
  const valSize = num("train", v, "val-size", 0.05, 0, 0.5);
  const say = (line: string) => process.stderr.write(`${line}\n`);
  // Every number, and the data, is checked before the (slow) model load.
  const maxSamples = v["max-samples"] === undefined ? undefined : int("train", v, "max-samples", 0, 1);
  const maxLength = int("train", v, "max-length", 512, 2);
  const hyper = {
    lr: num("train", v, "lr", TRAIN_DEFAULTS.lr, 0),
    epochs: int("train", v, "epochs", TRAIN_DEFAULTS.epochs, 1),
    batchSize: int("train", v, "batch-size", TRAIN_DEFAULTS.batchSize, 1),
    gradAccum: int("train", v, "grad-accum", TRAIN_DEFAULTS.gradAccum, 1),
    saveSteps: int("train", v, "save-steps", TRAIN_DEFAULTS.saveSteps, 1),
  };
  const lora = {
    r: int("train", v, "r", LORA_DEFAULTS.r, 1),
    lora_alpha: num("train", v, "alpha", LORA_DEFAULTS.lora_alpha, 0),
    lora_dropout: num("train", v, "dropout", LORA_DEFAULTS.lora_dropout, 0, 0.99),
  };

  const { pairs, issues } = await readQuestionPairs(files, { strict: v.strict });
  await prepareOutDir("train", out);
  for (const issue of issues.slice(0, MAX_ISSUE_LINES)) say(`skipped: ${formatIssue(issue)}`);
  if (issues.length > MAX_ISSUE_LINES) say(`skipped ${issues.length - MAX_ISSUE_LINES} more malformed items`);
  const tokenizer = await loadTokenizer(modelDir);
  if (!tokenizer) throw new CliError(`train: ${modelDir} has no tokenizer.json, which training needs to read text`);
  const model = await loadForCli("train", v);
  const targets = v["target-modules"] ?? "q_proj,v_proj";
  const recipe: TrainingRecipe = {
    // PEFT's "all-linear" is a string; a list is comma-separated names.
    lora: { target_modules: targets === "all-linear" ? targets : targets.split(",").map((s) => s.trim()), ...lora },
    maxSamples,
    valSize,
    maxLength,
    seed,
    hyper,
  };
  const { result } = await trainOnPairs(model, tokenizer, pairs, recipe, {
    outDir: out,
    resume: v.resume,
    baseModel: modelDir,
    log: say,
    onData: (d) => {
      say(`${d.pairs} pairs from ${files.length} file(s); ${d.train} train, ${d.val} validation`);
      if (d.truncated > 0) say(`truncated ${d.truncated} pair(s) longer than --max-length ${maxLength} tokens`);
    },
  });
  say(`adapter written to ${out}`);
  const lastVal = result.history.val.at(-1)?.loss ?? null;
  process.stdout.write(JSON.stringify({ adapter: out, steps: result.steps, val_loss: lastVal }) + "\n");
}
