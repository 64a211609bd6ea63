import { existsSync } from "node:fs";
import { basename, join } from "node:path";
import { readJson } from "../align/folder.ts";
import { parseLangs, type Lang } from "../eval/languages.ts";
import { resolveDataSource } from "../eval/default_data.ts";
import { RecordingSource } from "../eval/source.ts";
import { getTask } from "../eval/tasks.ts";
import { INTERP_SUMMARY, writeInterpReport, interpret, type InterpOptions, type InterpReport } from "../interp/report.ts";
import type { ProbeSet } from "../interp/probe.ts";
import { buildProbeSets } from "../interp/sets.ts";
import { loadConfig, type LlamaConfig } from "../model/config.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { CliError, deviceOption, int, modelOption, type OptionTable, type Values } from "./args.ts";
import { EVAL_BATCH_SIZE, PROMPT_OPTIONS, protocolOptions } from "./eval.ts";
import { loadCheckedAdapter, loadForCli } from "./model.ts";
import { Progress, quietOption } from "./progress.ts";
import { provenance } from "./provenance.ts";
import { prepareOutDir, previousRunFiles, removeEntries } from "./output.ts";

const { default: _task, ...task } = PROMPT_OPTIONS.task;
const { default: _langs, ...langs } = PROMPT_OPTIONS.langs;

/** Options shared by `qalign lens` and `qalign pca`: eval's prompts, --task and --langs required. */
export const INTERP_OPTIONS = {
  ...modelOption,
  adapter: { type: "string", arg: "DIR", help: "a PEFT LoRA adapter: the aligned model is measured too, beside the base model" },
  ...PROMPT_OPTIONS,
  task: { ...task, required: true },
  langs: { ...langs, required: true },
  out: { type: "string", arg: "DIR", required: true, help: "where the SVG charts and their JSON/CSV numbers are written" },
  ...deviceOption,
  ...quietOption,
} as const satisfies OptionTable;

/** Runs `parseValue`; an error other than a CliError becomes one naming --`flag`. */
function option<T>(command: string, flag: string, parseValue: () => T): T {
  try {
    return parseValue();
  } catch (e) {
    throw e instanceof CliError ? e : new CliError(`${command}: --${flag}: ${(e as Error).message}`);
  }
}

/**
 * The files an earlier run of `command` left in `out` (those its summary.json lists), which
 * this run replaces, so that the folder never mixes two runs.
 * @throws CliError naming the folder when it holds anything else (a model, another command's
 *   results); DataError naming summary.json when it cannot be read
 */
async function previousInterpFiles(command: string, out: string): Promise<string[]> {
  const summary = join(out, INTERP_SUMMARY);
  const saved = existsSync(summary) ? await readJson<{ command?: string; files?: string[] }>(summary) : null;
  const own = saved?.command === command ? [INTERP_SUMMARY, ...(saved.files ?? []).map((f) => basename(f))] : [];
  return previousRunFiles(command, out, own);
}

/** What a command adds to the shared run: its probes, given the model config and the prompts. */
export interface InterpCommand {
  name: string;
  /** Languages to add to --langs (e.g. the correlation's reference), with the reason. */
  required?: { lang: Lang; why: string };
  /**
   * The command's probes, given the model's config and the prompts (before the model is loaded).
   * @throws CliError when the prompts cannot support them.
   */
  probes(config: LlamaConfig, sets: readonly ProbeSet[]): Omit<InterpOptions, "label" | "onProgress" | "batchSize">;
}

/**
 * The shared run of `qalign lens` and `qalign pca`: builds the evaluation's prompts for --task
 * in --langs, measures the base model, and with --adapter the aligned model too (the adapter
 * loaded onto the same weights), then writes the charts and numbers into --out (an empty
 * folder, or an earlier run of the same command, whose files are replaced). Progress goes
 * to stderr; on success one JSON line on stdout: {"out": DIR, "files": [...]}.
 * @throws CliError for missing or invalid options; DataError for bad data; CheckpointError.
 */
export async function runInterp(cmd: InterpCommand, values: Values<typeof INTERP_OPTIONS>): Promise<void> {
  const name = cmd.name;
  const modelDir = values.model;
  const out = values.out;
  const task = option(name, "task", () => getTask(values.task));
  const langs = option(name, "langs", () => parseLangs(values.langs));
  const progress = new Progress({ quiet: values.quiet });
  const say = (line: string) => progress.say(line);
  if (cmd.required && !langs.includes(cmd.required.lang)) {
    say(`${name}: adding ${cmd.required.lang} to --langs (${cmd.required.why})`);
    langs.unshift(cmd.required.lang);
  }
  const tokenizer = await loadTokenizer(modelDir);
  if (!tokenizer) throw new CliError(`${name}: ${modelDir} has no tokenizer.json, which the prompts need`);
  const started = new Date();
  const source = new RecordingSource(await resolveDataSource(typeof values.data === "string" ? values.data : undefined));
  const prompts = protocolOptions(name, values, task);
  const limit = values.limit === undefined ? undefined : int(name, values, "limit", 0, 1);
  const adapter = typeof values.adapter === "string" ? values.adapter : null;

  const batchSize = int(name, values, "eval-batch-size", EVAL_BATCH_SIZE, 1);

  // Data and probe settings are checked before the (slow) model load.
  const config = await loadConfig(modelDir);
  const sets = await buildProbeSets(tokenizer, source, task, langs, { ...prompts, limit, maxLength: config.max_position_embeddings });
  const probes = cmd.probes(config, sets);
  await prepareOutDir(name, out);
  const previous = await previousInterpFiles(name, out);
  const model = await loadForCli(name, { ...values, adapter: undefined }, progress);
  const count = progress.counters("items");
  const run = (label: string): Promise<InterpReport> => {
    say(`${name}: ${label} model (${source.description}, ${task.title}, ${langs.join(" ")})`);
    return interpret(model, tokenizer, sets, {
      ...probes,
      label,
      batchSize,
      onProgress: (lang, done, total) => count(`${name} ${label} ${lang}`, done, total),
    });
  };
  const reports = [await run("base")];
  if (adapter) {
    await loadCheckedAdapter(model, adapter, modelDir, progress);
    reports.push(await run("aligned"));
  }
  model.dispose();
  for (const r of reports) {
    for (const p of r.pca ?? []) {
      const slow = p.converged.flatMap((ok, i) => (ok ? [] : [`PC${i + 1}`]));
      if (slow.length) say(`${name}: ${r.label} layer ${p.layer}: ${slow.join(", ")} did not converge (nearly equal variances); see summary.json`);
    }
  }
  const counts = [...new Set(sets.map((s) => s.prompts.length))].join("/");
  const subtitle = `${task.title}, ${prompts.protocol} protocol, ${prompts.labels} answer words, ${prompts.shots}-shot, ${counts} items per language, model ${basename(modelDir)}${adapter ? `, adapter ${basename(adapter)}` : ""}`;
  const record = await provenance({ started, finished: new Date(), device: model.device, modelDir, dtype: values.dtype, adapterDir: adapter, source });
  await removeEntries(out, previous);
  const files = await writeInterpReport(out, reports, subtitle, record, name);
  process.stdout.write(JSON.stringify({ out, files }) + "\n");
}

/** Top tokens per layer when --top-k is not given. */
const TOP_K = 5;

export const options = {
  ...INTERP_OPTIONS,
  "top-k": { type: "string", arg: "K", help: "top tokens listed per layer and language (most probable under the lens)", default: String(TOP_K) },
} as const satisfies OptionTable;

/**
 * `qalign lens --model DIR --task T --langs L --out DIR [options]`:
 * Logit Lens curves per layer (answer word in the prompt's language and in English, entropy,
 * top tokens), base and, with --adapter, aligned. See {@link runInterp}.
 */
export async function run(v: Values<typeof options>): Promise<void> {
  await runInterp({ name: "lens", probes: () => ({ lens: true, correlation: false, topK: int("lens", v, "top-k", TOP_K, 1) }) }, v);
}
