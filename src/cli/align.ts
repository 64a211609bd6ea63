import { basename, join } from "node:path";
import { QUESTION_TASK, trainTaskMessage, type AlignConfig } from "../align/config.ts";
import { comparisons, comparisonTable } from "../align/report.ts";
import { runAlign } from "../align/run.ts";
import { resolveDataSource } from "../eval/source.ts";
import { LORA_DEFAULTS } from "../lora/layer.ts";
import { TRAIN_DEFAULTS } from "../lora/trainer.ts";
import { ensureTinyModel } from "../model/tiny.ts";
import { CliError, int, num, parse } from "./args.ts";
import { EVAL_OPTIONS, evalOptions, langsOption, taskOption, tokenizerFor } from "./eval.ts";
import { loadForCli } from "./model.ts";
import { prepareOutDir } from "./output.ts";

/**
 * Limits of the embedded default (`npm start`: no --model, so the tiny random checkpoint):
 * small enough to finish in a few minutes on a 2-core laptop, large enough to run every stage
 * in all 20 languages. Training takes small optimizer steps (batch 4, no accumulation) at a
 * higher learning rate than the paper's 5e-5, so that a handful of pairs (the built-in sample
 * has 12 per source pair) still moves the adapter away from its zero start.
 */
export const TINY_DEFAULTS = { limit: 12, maxTrainSamples: 48, epochs: 2, lr: 1e-3, batchSize: 4, gradAccum: 1 } as const;

/**
 * `qalign align [--model DIR] [--task snli] [--train zh,es] [--target en] [--train-task snli]
 * [--langs all|...] [--limit N] [--max-train-samples N] [--epochs E] [--lr LR] [--out runs/NAME]
 * [--interp] [eval options]`: evaluates the base model, LoRA-tunes it on question translation
 * only, evaluates the aligned model, and writes results.json, results.csv, report.md and a chart
 * to --out (see src/align/); the comparison table goes to stdout, progress to stderr. A
 * rerun with the same --out resumes. Without --model it runs the embedded default: the tiny
 * random checkpoint on small limits (TINY_DEFAULTS).
 */
export async function run(args: string[]): Promise<void> {
  const v = parse("align", args, {
    ...EVAL_OPTIONS,
    model: { type: "string" },
    train: { type: "string" },
    target: { type: "string" },
    "train-task": { type: "string" },
    "max-train-samples": { type: "string" },
    epochs: { type: "string" },
    lr: { type: "string" },
    out: { type: "string" },
    interp: { type: "boolean", default: false },
  });
  const say = (line: string) => process.stderr.write(`${line}\n`);
  const tiny = typeof v.model !== "string";
  const modelDir = tiny ? await ensureTinyModel() : (v.model as string);
  if (tiny) say(`align: no --model, so the tiny random checkpoint (${modelDir}) on small limits: expect chance-level accuracy`);
  const task = taskOption("align", v);
  const trainTask = taskOption("align", v, "train-task", QUESTION_TASK);
  if (trainTask.id !== QUESTION_TASK) throw new CliError(`align: ${trainTaskMessage(trainTask.id)}`);
  const train = langsOption("align", v, "train", "zh,es");
  const targets = langsOption("align", v, "target", "en");
  if (targets.length !== 1) throw new CliError("align: --target takes one language");
  const target = targets[0]!;
  const maxTrain = v["max-train-samples"] !== undefined || tiny ? int("align", v, "max-train-samples", TINY_DEFAULTS.maxTrainSamples, 1) : undefined;
  const cfg: AlignConfig = {
    modelDir,
    tiny,
    task: task.id,
    trainTask: trainTask.id,
    train,
    target,
    langs: langsOption("align", v, "langs", "all"),
    evaluation: evalOptions("align", v, task, tiny ? TINY_DEFAULTS.limit : undefined),
    training: {
      ...(maxTrain !== undefined ? { maxSamples: maxTrain } : {}),
      epochs: int("align", v, "epochs", tiny ? TINY_DEFAULTS.epochs : TRAIN_DEFAULTS.epochs, 1),
      lr: num("align", v, "lr", tiny ? TINY_DEFAULTS.lr : TRAIN_DEFAULTS.lr, 0),
      batchSize: tiny ? TINY_DEFAULTS.batchSize : TRAIN_DEFAULTS.batchSize,
      gradAccum: tiny ? TINY_DEFAULTS.gradAccum : TRAIN_DEFAULTS.gradAccum,
      maxLength: 512,
      valSize: 0.05,
      r: LORA_DEFAULTS.r,
      alpha: LORA_DEFAULTS.lora_alpha,
      dropout: LORA_DEFAULTS.lora_dropout,
      targetModules: [...(LORA_DEFAULTS.target_modules as string[])],
    },
    interp: v.interp,
    out: typeof v.out === "string" ? v.out : join("runs", `align-${tiny ? "tiny" : basename(modelDir)}-${task.id}-${train.join("+")}-${target}`),
  };
  const tokenizer = await tokenizerFor("align", modelDir);
  const source = await resolveDataSource(v.data);
  await prepareOutDir("align", cfg.out);
  const model = await loadForCli("align", { ...v, model: modelDir });
  const started = performance.now();
  const r = await runAlign(model, tokenizer, source, cfg, say);
  model.dispose();
  process.stdout.write(comparisonTable(comparisons(r), cfg.train));
  say(`align: done in ${((performance.now() - started) / 1000).toFixed(0)} s; report ${join(cfg.out, "report.md")}`);
}
