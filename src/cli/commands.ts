import { TASKS } from "../eval/tasks.ts";

/** The registry of `qalign` commands. Each entry's module holds its options and its work. */
export interface Command {
  summary: string;
  usage: string;
  /** Option -> its default, for the options whose default the usage line does not show. */
  defaults?: Record<string, string>;
  run(args: string[]): Promise<void>;
}

/** Defaults shared by several commands (the values the option parsers fall back to). */
const SHOTS = `the task's: ${Object.values(TASKS).map((t) => `${t.id} ${t.shots}`).join(", ")}`;
const DATA = "../shared/data/qalign when it exists, else the built-in sample (--data sample)";
const DEVICE = "auto (webgpu on a hardware GPU, else wasm on --threads threads, default every core)";
/** The evaluation options' defaults, shared by eval and align. */
const EVAL_DEFAULTS: Record<string, string> = {
  "--task": "snli",
  "--langs": "all",
  "--limit": "all items",
  "--shots": SHOTS,
  "--mode": "prefix",
  "--batch-size": "8",
  "--seed": "0",
  "--max-length": "the model's max_position_embeddings",
  "--data": DATA,
  "--device": DEVICE,
};

const lazy = (load: () => Promise<{ run(args: string[]): Promise<void> }>) => async (args: string[]) => (await load()).run(args);

export const COMMANDS: Record<string, Command> = {
  logits: {
    summary: "print the logits of a token sequence as JSON {\"logits\": [[...], ...]} ([seq, vocab])",
    usage: "--model DIR --ids 5,17,42 [--adapter DIR] [--device cpu|wasm|webgpu|auto] [--threads N]",
    defaults: { "--device": DEVICE },
    run: lazy(() => import("./logits.ts")),
  },
  generate: {
    summary: "continue a text prompt, streaming tokens as they come",
    usage: "--model DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--adapter DIR] [--device ...]",
    defaults: { "--max-new-tokens": "32", "--temperature": "0 (greedy: always the most likely token)", "--top-p": "1 (no nucleus cut)", "--seed": "0", "--device": DEVICE },
    run: lazy(() => import("./generate.ts")),
  },
  train: {
    summary: "LoRA question alignment: tune a model to translate questions into English, writing a PEFT adapter",
    usage:
      "--model DIR --data FILE[,FILE...] --out DIR [--target-modules q_proj,v_proj|all-linear] [--r 8] [--alpha 16] [--dropout 0.05] " +
      "[--lr 5e-5] [--epochs 3] [--batch-size 4] [--grad-accum 4] [--max-samples N] [--max-length 512] [--val-size 0.05] " +
      "[--save-steps 50] [--seed 0] [--strict] [--resume] [--device cpu|wasm|webgpu|auto] [--threads N]",
    defaults: { "--max-samples": "all pairs", "--device": DEVICE },
    run: lazy(() => import("./train.ts")),
  },
  loss: {
    summary: "print the mean next-token loss of ids[P:] as JSON {\"loss\": x}",
    usage: "--model DIR --ids 5,17,42,... --prompt-len P [--adapter DIR] [--device cpu|wasm|webgpu|auto] [--threads N]",
    defaults: { "--device": DEVICE },
    run: lazy(() => import("./loss.ts")),
  },
  // interp
  lens: {
    summary: "Logit Lens: answer-word probability per layer (prompt language vs English), entropy and top tokens, as SVG charts + JSON/CSV",
    usage:
      "--model DIR [--adapter DIR] --task snli|emotion|paws --langs en,zh,...|all --out DIR [--limit N] [--top-k 5] [--shots K] " +
      "[--seed 0] [--batch-size 8] [--english-labels] [--data DIR] [--device cpu|wasm|webgpu|auto] [--threads N]",
    defaults: { "--limit": "all items", "--top-k": "5", "--shots": SHOTS, "--seed": "0", "--batch-size": "8", "--data": DATA, "--device": DEVICE },
    run: lazy(() => import("./lens.ts")),
  },
  pca: {
    summary: "PCA of last-token hidden states per layer, coloured by language, and their correlation with English, as SVG charts + JSON/CSV",
    usage:
      "--model DIR [--adapter DIR] --task snli|emotion|paws --langs en,zh,...|all --out DIR [--layers 0,8,16,last] [--components 4] " +
      "[--limit N] [--shots K] [--seed 0] [--batch-size 8] [--english-labels] [--data DIR] [--device cpu|wasm|webgpu|auto] [--threads N]",
    defaults: {
      "--layers": "0,<half the layers>,last",
      "--components": "4 (at most the number of items - 1)",
      "--limit": "all items",
      "--shots": SHOTS,
      "--seed": "0",
      "--batch-size": "8",
      "--data": DATA,
      "--device": DEVICE,
    },
    run: lazy(() => import("./pca.ts")),
  },
  prompt: {
    summary: "print the exact prompt of one test item as evaluation builds it; with --model also its token ids and each class's token set",
    usage: "--task snli|emotion|paws --lang L --index I [--protocol paper|qalign] [--labels english|native] [--shots K] [--seed S] [--model DIR] [--json] [--data DIR]",
    defaults: { "--protocol": "paper", "--labels": "english for paper, native for qalign", "--shots": SHOTS, "--seed": "0", "--data": DATA },
    run: lazy(() => import("./prompt.ts")),
  },
  // eval
  eval: {
    summary: "k-shot accuracy per language (constrained decoding over the label words) with 95% intervals, as a table; JSON/CSV with --out",
    usage:
      "--model DIR [--adapter DIR] [--task snli|emotion|paws] [--langs all|en,zh,...] [--limit N] [--shots K] [--mode prefix|loglik] " +
      "[--english-labels] [--batch-size B] [--seed S] [--max-length N] [--no-cache] [--skip-invalid] [--data DIR] [--out DIR] [--device cpu|wasm|webgpu|auto] [--threads N]",
    defaults: EVAL_DEFAULTS,
    run: lazy(() => import("./eval.ts")),
  },
  align: {
    summary: "question alignment end to end: evaluate, LoRA-tune on question translation only, evaluate again, report (no --model: tiny demo)",
    usage:
      "[--model DIR] [--task snli|emotion|paws] [--train zh,es] [--target en] [--train-task snli] [--langs all|...] [--limit N] " +
      "[--max-train-samples N] [--epochs E] [--lr LR] [--out runs/NAME] [--interp] [--shots K] [--mode prefix|loglik] [--english-labels] " +
      "[--batch-size B] [--seed S] [--max-length N] [--data DIR] [--device cpu|wasm|webgpu|auto] [--threads N]",
    defaults: {
      "--model": "the tiny random checkpoint, with --limit 12, --max-train-samples 48, --epochs 2, --lr 1e-3 (a demo)",
      "--train": "zh,es",
      "--target": "en",
      "--train-task": "snli",
      "--max-train-samples": "all pairs",
      "--epochs": "3",
      "--lr": "5e-5",
      "--out": "runs/align-<model>-<task>-<train>-<target>",
      ...EVAL_DEFAULTS,
    },
    run: lazy(() => import("./align.ts")),
  },
};

/** `qalign <name> --help`: the usage line, the summary, and the defaults not shown in the usage. */
export function helpText(name: string): string {
  const c = COMMANDS[name];
  if (!c) throw new RangeError(`no command "${name}"`);
  const defaults = Object.entries(c.defaults ?? {});
  const width = Math.max(0, ...defaults.map(([flag]) => flag.length));
  const lines = defaults.map(([flag, value]) => `  ${flag.padEnd(width)}  ${value}`);
  return `usage: qalign ${name} ${c.usage}\n\n${c.summary}\n${lines.length ? `\ndefaults:\n${lines.join("\n")}\n` : ""}`;
}
