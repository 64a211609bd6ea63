import { join } from "node:path";
import { toCsv } from "../io/plot.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { checkLanguages, evaluateLanguage, type EvalOptions, type LanguageResult, type ScoreMode } from "../eval/evaluate.ts";
import { parseLangs, type Lang } from "../eval/languages.ts";
import { macroAverage } from "../eval/metrics.ts";
import { formatTable, pct, resultRows, versions } from "../eval/report.ts";
import { resolveDataSource } from "../eval/source.ts";
import { getTask, type TaskSpec } from "../eval/tasks.ts";
import { loadTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { CliError, deviceOption, int, parse, required } from "./args.ts";
import { loadForCli } from "./model.ts";
import { prepareOutDir } from "./output.ts";

/** Options shared by `qalign eval` and `qalign align`: what to evaluate and how. */
export const EVAL_OPTIONS = {
  task: { type: "string" },
  langs: { type: "string" },
  limit: { type: "string" },
  shots: { type: "string" },
  mode: { type: "string" },
  "english-labels": { type: "boolean", default: false },
  "batch-size": { type: "string" },
  seed: { type: "string" },
  "max-length": { type: "string" },
  data: { type: "string" },
  ...deviceOption,
} as const;

/** Parses --task (default `fallback`). @throws CliError for an unknown task. */
export function taskOption(command: string, values: Record<string, unknown>, name = "task", fallback = "snli"): TaskSpec {
  try {
    return getTask(typeof values[name] === "string" ? (values[name] as string) : fallback);
  } catch (e) {
    throw new CliError(`${command}: --${name}: ${(e as Error).message}`);
  }
}

/** Parses a language list option (default `fallback`). @throws CliError for an unknown code. */
export function langsOption(command: string, values: Record<string, unknown>, name: string, fallback: string): Lang[] {
  try {
    return parseLangs(typeof values[name] === "string" ? (values[name] as string) : fallback);
  } catch (e) {
    throw new CliError(`${command}: --${name}: ${(e as Error).message}`);
  }
}

/**
 * The evaluation options of EVAL_OPTIONS (with `limit` defaulting to `defaultLimit`).
 * @throws CliError for a bad number or --mode.
 */
export function evalOptions(command: string, values: Record<string, unknown>, task: TaskSpec, defaultLimit?: number): EvalOptions {
  const mode = (values.mode ?? "prefix") as string;
  if (mode !== "prefix" && mode !== "loglik") throw new CliError(`${command}: --mode must be prefix or loglik, got "${mode}"`);
  return {
    shots: int(command, values, "shots", task.shots, 0),
    mode: mode as ScoreMode,
    englishLabels: values["english-labels"] === true,
    batchSize: int(command, values, "batch-size", 8, 1),
    seed: int(command, values, "seed", 0),
    ...(values.limit !== undefined || defaultLimit !== undefined ? { limit: int(command, values, "limit", defaultLimit ?? 0, 1) } : {}),
    ...(values["max-length"] !== undefined ? { maxLength: int(command, values, "max-length", 0, 2) } : {}),
  };
}

/** The model folder's tokenizer. @throws CliError when it has none. */
export async function tokenizerFor(command: string, dir: string): Promise<Tokenizer> {
  const tokenizer = await loadTokenizer(dir);
  if (!tokenizer) throw new CliError(`${command}: ${dir} has no tokenizer.json, which the prompts need`);
  return tokenizer;
}

/** Where `qalign eval --out DIR` writes, and what goes in results.json besides the results. */
interface EvalOutput {
  dir: string;
  record: Record<string, unknown>;
  /** Requested languages, in order; those without a result yet are listed as `pending`. */
  langs: readonly Lang[];
  adapter: boolean;
}

/**
 * Writes results.json and results.csv with the languages finished so far: called after every
 * language, so that a failure later in the run keeps them. results.json says `complete` and
 * lists the `pending` languages.
 */
async function writeResults(out: EvalOutput, results: readonly LanguageResult[]): Promise<void> {
  const done = new Set(results.map((r) => r.lang));
  const pending = out.langs.filter((l) => !done.has(l));
  const record = { ...out.record, complete: pending.length === 0, pending, average: macroAverage(results.map((r) => r.accuracy)), results };
  await writeFileAtomic(join(out.dir, "results.json"), JSON.stringify(record, null, 1) + "\n");
  await writeFileAtomic(join(out.dir, "results.csv"), toCsv(resultRows(out.adapter ? "adapter" : "base", results)));
}

/**
 * `qalign eval --model DIR [--adapter DIR] [--task snli|emotion|paws] [--langs all|en,zh,...]
 * [--limit N] [--shots K] [--mode prefix|loglik] [--english-labels] [--batch-size B] [--seed S]
 * [--max-length N] [--no-cache] [--skip-invalid] [--data DIR] [--out DIR] [--device ...]`:
 * evaluates one model and prints the table of accuracies on stdout (progress on stderr); with
 * --out also writes results.json (every number, every item) and results.csv, rewritten after
 * each language. Every language's data is checked before the model is loaded.
 */
export async function run(args: string[]): Promise<void> {
  const v = parse("eval", args, {
    ...EVAL_OPTIONS,
    model: { type: "string" },
    adapter: { type: "string" },
    out: { type: "string" },
    "no-cache": { type: "boolean", default: false },
    "skip-invalid": { type: "boolean", default: false },
  });
  const modelDir = required("eval", v, "model");
  const task = taskOption("eval", v);
  const langs = langsOption("eval", v, "langs", "all");
  const say = (line: string) => process.stderr.write(`${line}\n`);
  const options: EvalOptions = {
    ...evalOptions("eval", v, task),
    prefixCache: !v["no-cache"],
    onInvalid: v["skip-invalid"] ? "skip" : "error",
    onWarning: (lang, w) => say(`eval ${lang}: ${w}`),
  };
  const tokenizer = await tokenizerFor("eval", modelDir);
  const source = await resolveDataSource(v.data);
  const prompts = await checkLanguages(source, task, langs, options);
  const out: EvalOutput | null =
    typeof v.out === "string"
      ? {
          dir: v.out,
          record: { model: modelDir, adapter: v.adapter ?? null, task: task.id, data: source.description, options, versions: await versions() },
          langs,
          adapter: typeof v.adapter === "string",
        }
      : null;
  if (out) await prepareOutDir("eval", out.dir);
  const model = await loadForCli("eval", v);
  say(`eval: ${task.title}, ${langs.length} language(s), ${source.description}`);
  const results: LanguageResult[] = [];
  for (const lang of langs) {
    const r = await evaluateLanguage({ model, tokenizer, source, task, options, prompts }, lang);
    for (const s of r.skipped) say(`skipped ${s.file}[${s.index}].${s.field}: ${s.problem}`);
    for (const t of r.truncated) say(`truncated ${r.file}[${t.index}]: ${t.dropped} tokens dropped on the left`);
    say(`${lang}: ${pct(r.accuracy)}% of ${r.n} (${r.seconds.toFixed(1)} s, ${r.itemsPerSecond.toFixed(1)} items/s)`);
    results.push(r);
    if (out) await writeResults(out, results);
  }
  process.stdout.write(formatTable(results));
  if (out) say(`eval: wrote ${join(out.dir, "results.json")} and results.csv`);
}
