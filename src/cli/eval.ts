import { existsSync } from "node:fs";
import { join } from "node:path";
import { changedSettings, readJson, savedRecord } from "../align/folder.ts";
import { DataError } from "../io/data_error.ts";
import { toCsv } from "../io/plot.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { checkLanguages, evaluateLanguage, type EvalOptions, type LanguageResult, type Scoring, type ScoreMode } from "../eval/evaluate.ts";
import { parseLangs, type Lang } from "../eval/languages.ts";
import { macroAverage } from "../eval/metrics.ts";
import type { LabelLanguage } from "../eval/paper.ts";
import { DEFAULT_PROTOCOL, defaultLabels, protocolSettings, PROTOCOLS, type Protocol, type ProtocolOptions } from "../eval/protocol.ts";
import { formatTable, pct, resultRows } from "../eval/report.ts";
import { resolveDataSource } from "../eval/default_data.ts";
import { RecordingSource } from "../eval/source.ts";
import { getTask, TASKS, type TaskSpec } from "../eval/tasks.ts";
import { loadTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { adapterOption, CliError, deviceOption, int, listOption, modelOption, type OptionTable, type Values } from "./args.ts";
import { checkMaxLength, loadForCli } from "./model.ts";
import { Progress, quietOption } from "./progress.ts";
import { dataProvenance, fixedProvenance, withData, type FixedProvenance, type RunInputs } from "./provenance.ts";
import { prepareOutDir, previousRunFiles } from "./output.ts";

/** Prompts per forward pass in evaluation, when --eval-batch-size is not given. */
export const EVAL_BATCH_SIZE = 8;

/** --shots' default, per task. */
const SHOTS_DEFAULT = `the task's: ${Object.values(TASKS).map((t) => `${t.id} ${t.shots}`).join(", ")}`;

/** The --data option of the commands that read the question-alignment data. */
export const dataOption = {
  data: {
    type: "string",
    arg: "DIR|sample",
    help: "the question-alignment data folder (snli/, ap_emotion/, paws/ in the release's layout), or sample (the built-in sample)",
    default: "../shared/data/qalign when it exists, else sample",
  },
} as const satisfies OptionTable;

/** The options that choose a protocol's prompts, shared by eval, align, lens, pca and prompt. */
export const PROTOCOL_OPTIONS = {
  protocol: {
    type: "string",
    arg: PROTOCOLS.join("|"),
    help: "how prompts are built and scored: paper (the authors' fixed demonstrations, templates, English answer words and token sets; every item) or qalign (demonstrations drawn from the test file, qalign's field words and byte-level token sets)",
    default: DEFAULT_PROTOCOL,
  },
  labels: {
    type: "string",
    arg: "english|native",
    help: "the answer words' language in the prompts (paper: native exists for emotion only, the authors' native-label script)",
    default: `${defaultLabels("paper")} for paper, ${defaultLabels("qalign")} for qalign`,
  },
  shots: { type: "string", arg: "K", help: "demonstrations in each prompt (qalign: drawn from the language's own test file; paper: the authors' fixed ones only)", default: SHOTS_DEFAULT },
  seed: { type: "string", arg: "S", help: "seeds the --limit subset (and qalign's demonstrations)", default: "0" },
} as const satisfies OptionTable;

/**
 * Parses PROTOCOL_OPTIONS into prompt options with every default filled in, so that results
 * and run.json name each setting: --protocol (default paper), --labels (the protocol's
 * default), --shots (the task's; the paper protocol takes only that, its demonstrations being
 * fixed) and --seed (default 0).
 * @throws CliError for other values.
 */
export function protocolOptions(command: string, values: Record<string, unknown>, task: TaskSpec): Required<Pick<ProtocolOptions, "protocol" | "labels" | "shots" | "seed">> {
  const protocol = (values.protocol ?? DEFAULT_PROTOCOL) as Protocol;
  if (!PROTOCOLS.includes(protocol)) throw new CliError(`${command}: --protocol must be ${PROTOCOLS.join(" or ")}, got "${String(values.protocol)}"`);
  const labels = (values.labels ?? defaultLabels(protocol)) as LabelLanguage;
  if (labels !== "english" && labels !== "native") throw new CliError(`${command}: --labels must be english or native, got "${String(values.labels)}"`);
  const shots = int(command, values, "shots", task.shots, 0);
  if (protocol === "paper" && shots !== task.shots) {
    throw new CliError(`${command}: --shots ${shots}: the paper protocol uses the authors' ${task.shots} fixed ${task.title} demonstrations; other shot counts need --protocol qalign`);
  }
  return { protocol, labels, shots, seed: int(command, values, "seed", 0) };
}

/** The prompt options shared by eval, align, lens and pca: which items, under which protocol. */
export const PROMPT_OPTIONS = {
  task: { type: "string", arg: Object.keys(TASKS).join("|"), help: "the task evaluated", default: "snli" },
  langs: { type: "string", arg: "all|en,zh,...", help: "languages evaluated: comma-separated codes, or all (the release's 20)", default: "all" },
  limit: { type: "string", arg: "N", help: "scored items per language at most: a seeded, class-balanced subset, the same items in every language", default: "all items" },
  ...PROTOCOL_OPTIONS,
  "eval-batch-size": { type: "string", arg: "B", help: "prompts per forward pass in evaluation (x label words with --mode loglik)", default: String(EVAL_BATCH_SIZE), was: ["batch-size"] },
  ...dataOption,
} as const satisfies OptionTable;

/** Options shared by `qalign eval` and `qalign align`: what to evaluate and how. */
export const EVAL_OPTIONS = {
  ...PROMPT_OPTIONS,
  mode: {
    type: "string",
    arg: "prefix|loglik",
    help: "scoring: prefix (the paper's constrained decoding: next-token mass of each label word's first tokens) or loglik (log-likelihood of each whole label word)",
    default: "prefix",
  },
  scoring: {
    type: "string",
    arg: "index|authors",
    help: "which rule judges an item: index (its class from the English file by index) or authors (the authors' tie-breaking and their table check, bug for bug); both are computed and their disagreements reported",
    default: "index",
  },
  "eval-max-length": {
    type: "string",
    arg: "N",
    help: "longest evaluation prompt in tokens; longer ones lose tokens on the left, with a notice",
    default: "the model's max_position_embeddings",
    was: ["max-length"],
  },
  ...deviceOption,
  ...quietOption,
} as const satisfies OptionTable;

/** Parses --task (default `fallback`). @throws CliError for an unknown task. */
export function taskOption(command: string, values: Record<string, unknown>, name = "task", fallback = "snli"): TaskSpec {
  try {
    return getTask(typeof values[name] === "string" ? (values[name] as string) : fallback);
  } catch (e) {
    throw new CliError(`${command}: --${name}: ${(e as Error).message}`);
  }
}

/** Parses a language list option (default `fallback`). @throws CliError for an unknown code or one given twice. */
export function langsOption(command: string, values: Record<string, unknown>, name: string, fallback: string): Lang[] {
  const text = typeof values[name] === "string" ? (values[name] as string) : fallback;
  listOption(command, name, text);
  try {
    return parseLangs(text);
  } catch (e) {
    throw new CliError(`${command}: --${name}: ${(e as Error).message}`);
  }
}

/**
 * The evaluation options of EVAL_OPTIONS (with `limit` defaulting to `defaultLimit`), every
 * default filled in.
 * @throws CliError for a bad number, --mode or --scoring, and for --mode loglik under the paper
 *   protocol (its classes are scored by the authors' token sets).
 */
export function evalOptions(command: string, values: Values<typeof EVAL_OPTIONS>, task: TaskSpec, defaultLimit?: number): EvalOptions & { scoring: Scoring } {
  const prompts = protocolOptions(command, values, task);
  const mode = (values.mode ?? "prefix") as string;
  if (mode !== "prefix" && mode !== "loglik") throw new CliError(`${command}: --mode must be prefix or loglik, got "${mode}"`);
  if (mode === "loglik" && prompts.protocol === "paper") throw new CliError(`${command}: --mode loglik: the paper protocol scores by the authors' token sets (prefix); loglik needs --protocol qalign`);
  const scoring = (values.scoring ?? "index") as Scoring;
  if (scoring !== "index" && scoring !== "authors") throw new CliError(`${command}: --scoring must be index or authors, got "${String(values.scoring)}"`);
  return {
    ...prompts,
    mode: mode as ScoreMode,
    scoring,
    batchSize: int(command, values, "eval-batch-size", EVAL_BATCH_SIZE, 1),
    ...(values.limit !== undefined || defaultLimit !== undefined ? { limit: int(command, values, "limit", defaultLimit ?? 0, 1) } : {}),
    ...(values["eval-max-length"] !== undefined ? { maxLength: int(command, values, "eval-max-length", 0, 2) } : {}),
  };
}

/** The model folder's tokenizer. @throws CliError when it has none. */
export async function tokenizerFor(command: string, dir: string): Promise<Tokenizer> {
  const tokenizer = await loadTokenizer(dir);
  if (!tokenizer) throw new CliError(`${command}: ${dir} has no tokenizer.json, which the prompts need`);
  return tokenizer;
}

/**
 * The files `qalign eval --out DIR` writes there, results.json first: a folder holding anything
 * else, or these without results.json, holds no eval run.
 */
const RESULTS_JSON = "results.json";
const RESULTS_CSV = "results.csv";
const EVAL_ENTRIES = [RESULTS_JSON, RESULTS_CSV];

/** What results.json holds: the keys every version of it has had. */
const EVAL_RESULT = { what: "an eval result", keys: ["model", "task", "options", "results"] } as const;

/** Where `qalign eval --out DIR` writes, and what goes in results.json besides the results. */
interface EvalOutput {
  dir: string;
  record: Record<string, unknown>;
  /** Requested languages, in order; those without a result yet are listed as `pending`. */
  langs: readonly Lang[];
  adapter: boolean;
}

/** A run's provenance as results.json is rewritten: the fixed part computed once, data files hashed once each. */
interface RunRecord {
  run: RunInputs;
  fixed: FixedProvenance;
  /** Data file path -> SHA-256, filled as languages read more files (see dataProvenance). */
  hashed: Map<string, string>;
}

/**
 * Writes results.json and results.csv with the languages finished so far: called after every
 * language, so that a failure later in the run keeps them. results.json says `complete` and
 * lists the `pending` languages.
 */
async function writeResults(out: EvalOutput, results: readonly LanguageResult[], run: RunRecord): Promise<void> {
  const done = new Set(results.map((r) => r.lang));
  const pending = out.langs.filter((l) => !done.has(l));
  const complete = pending.length === 0;
  const record = {
    ...out.record,
    provenance: withData(run.fixed, await dataProvenance(run.run, run.hashed), complete ? new Date() : null),
    complete,
    pending,
    average: macroAverage(results.map((r) => r.accuracy)),
    results,
  };
  await writeFileAtomic(join(out.dir, RESULTS_JSON), JSON.stringify(record, null, 1) + "\n");
  await writeFileAtomic(join(out.dir, RESULTS_CSV), toCsv(resultRows(out.adapter ? "adapter" : "base", results)));
}

/**
 * The settings of a results.json that decide its numbers: all of `record` but the batch size and
 * the protocol's description in words (which the options imply).
 */
function numberSettings(record: Record<string, unknown>): Record<string, unknown> {
  const { batchSize: _, ...options } = (record.options ?? {}) as Record<string, unknown>;
  const { protocol: __, ...rest } = record;
  return { ...rest, options };
}

/**
 * The languages that an earlier `eval --out` into the same folder finished, when it evaluated with
 * these settings (a rerun resumes: finished languages are kept, the others evaluated).
 * @throws CliError naming the folder when it holds files of another kind (see previousRunFiles);
 *   DataError naming results.json when it is not an eval result, cannot be read back, or holds
 *   an evaluation with other settings (listing every differing one).
 */
async function savedResults(out: EvalOutput): Promise<Map<Lang, LanguageResult>> {
  await previousRunFiles("eval", out.dir, EVAL_ENTRIES, RESULTS_JSON);
  const file = join(out.dir, RESULTS_JSON);
  if (!existsSync(file)) return new Map();
  const saved = savedRecord(file, await readJson<unknown>(file), EVAL_RESULT);
  const differ = changedSettings(numberSettings(saved), numberSettings(out.record));
  if (differ.length > 0) throw new DataError(file, `holds an evaluation with other settings (${differ.join("; ")}); choose another --out or remove the folder`);
  const results = Array.isArray(saved.results) ? (saved.results as LanguageResult[]) : [];
  return new Map(results.map((r) => [r.lang, r]));
}

export const options = {
  ...modelOption,
  ...adapterOption,
  ...EVAL_OPTIONS,
  out: {
    type: "string",
    arg: "DIR",
    help: "also write results.json (every number, every item) and results.csv there, rewritten after each language; a rerun with the same settings keeps the finished languages",
  },
  "no-cache": { type: "boolean", help: "recompute the demonstrations for every item instead of reusing their KV cache (same numbers, slower; a check)" },
  "skip-invalid": { type: "boolean", help: "leave out malformed items with a notice instead of failing on the first" },
} as const satisfies OptionTable;

/**
 * `qalign eval --model DIR [options]` (the options: `options` above):
 * evaluates one model and prints the table of accuracies on stdout (progress on stderr); with
 * --out also writes results.json (every number, every item) and results.csv, rewritten after
 * each language. Every language's data is checked before the model is loaded.
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const modelDir = v.model;
  const task = taskOption("eval", v);
  const langs = langsOption("eval", v, "langs", "all");
  const progress = new Progress({ quiet: v.quiet });
  const say = (line: string) => progress.say(line);
  const opts: EvalOptions = {
    ...evalOptions("eval", v, task),
    prefixCache: !v["no-cache"],
    onInvalid: v["skip-invalid"] ? "skip" : "error",
    onWarning: (lang, w) => say(`eval ${lang}: ${w}`),
  };
  await checkMaxLength("eval", modelDir, opts.maxLength, "eval-max-length");
  const tokenizer = await tokenizerFor("eval", modelDir);
  const started = new Date();
  const source = new RecordingSource(await resolveDataSource(v.data));
  const prompts = await checkLanguages(source, task, langs, opts);
  const out: EvalOutput | null =
    typeof v.out === "string"
      ? {
          dir: v.out,
          record: { model: modelDir, adapter: v.adapter ?? null, dtype: v.dtype ?? null, task: task.id, data: source.description, options: opts, protocol: await protocolSettings(task, opts) },
          langs,
          adapter: typeof v.adapter === "string",
        }
      : null;
  if (out) await prepareOutDir("eval", out.dir);
  const saved = out ? await savedResults(out) : new Map<Lang, LanguageResult>();
  if (langs.every((l) => saved.has(l))) {
    say(`eval: every language is in ${join(out!.dir, RESULTS_JSON)} already; nothing to evaluate`);
    process.stdout.write(formatTable(langs.map((l) => saved.get(l)!)));
    return;
  }
  const model = await loadForCli("eval", v, progress);
  say(`eval: ${task.title}, ${langs.length} language(s), ${source.description}; protocol ${opts.protocol}, ${opts.labels} answer words, scoring ${opts.scoring}`);
  const inputs: RunInputs = { started, finished: null, device: model.device, modelDir, dtype: v.dtype, adapterDir: v.adapter, source };
  const prov: RunRecord | null = out ? { run: inputs, fixed: await fixedProvenance(inputs), hashed: new Map() } : null;
  const results: LanguageResult[] = [];
  for (const lang of langs) {
    const kept = saved.get(lang);
    if (kept) {
      say(`${lang}: ${pct(kept.accuracy)}% of ${kept.n}, kept from ${join(out!.dir, RESULTS_JSON)}`);
      results.push(kept);
      continue;
    }
    const r = await evaluateLanguage({ model, tokenizer, source, task, options: { ...opts, onProgress: progress.counter(`eval ${lang}`, "items") }, prompts }, lang);
    for (const s of r.skipped) say(`skipped ${s.file}[${s.index}].${s.field}: ${s.problem}`);
    for (const t of r.truncated) say(`truncated ${r.file}[${t.index}]: ${t.dropped} tokens dropped on the left`);
    const differ = r.judged.differ ? `; the index and authors' rules judge ${r.judged.differ} item(s) differently` : "";
    say(`${lang}: ${pct(r.accuracy)}% of ${r.n} (${r.seconds.toFixed(1)} s, ${r.itemsPerSecond.toFixed(1)} items/s)${differ}`);
    results.push(r);
    if (out && prov) await writeResults(out, results, prov);
  }
  process.stdout.write(formatTable(results));
  if (out) say(`eval: wrote ${join(out.dir, RESULTS_JSON)} and ${RESULTS_CSV}`);
}
