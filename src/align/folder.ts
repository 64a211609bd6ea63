import { DataError } from "../io/data_error.ts";
import { hostFiles, type Files } from "../io/files.ts";
import { parseJson } from "../io/json.ts";
import { decidingOptions } from "../lora/trainer.ts";
import type { AlignConfig } from "./config.ts";

/**
 * The run folder of a question-alignment run: one folder holds everything, each piece written
 * atomically as soon as it is done, so that a rerun with the same folder reads the finished
 * pieces instead of recomputing them:
 *
 *     run.json               the settings; a rerun with other settings is refused
 *     base/<lang>.json       base-model result of each language
 *     adapter/               the trained PEFT adapter and training.json (built in training/,
 *                            which holds the trainer's resumable checkpoints, then renamed)
 *     aligned/<lang>.json    aligned-model result of each language
 *     interp/                with --interp: Logit Lens / PCA of both models
 *     results.json, results.csv, report.md, accuracy.svg (+ .json / .csv of its rows)
 */

/** The run's settings, the first file a run writes: a folder without it holds no align run. */
export const RUN_SETTINGS = "run.json";

/**
 * The names at the run folder's top (the layout above; report.ts writes the last seven), which a
 * rerun finds there: a folder holding anything else holds no align run.
 */
export const RUN_ENTRIES = [RUN_SETTINGS, "base", "adapter", "training", "aligned", "interp", "results.json", "results.csv", "report.md", "report.html", "accuracy.svg", "accuracy.json", "accuracy.csv"] as const;

/** What run.json holds: the keys every align run's settings have had (see {@link fingerprint}). */
export const ALIGN_SETTINGS = { what: "an align run's settings", keys: ["modelDir", "task", "train", "target", "evaluation", "training"] } as const;

/** A kind of saved JSON record: what it is, in words, and the top-level keys it always has. */
export interface SavedKind {
  what: string;
  keys: readonly string[];
}

/** The summary file written into the adapter folder once training is complete. */
export const TRAINING_SUMMARY = "training.json";

/** Paths inside the run folder `out`, named by `files` (default: the host's). */
export async function runPaths(out: string, files?: Files) {
  const f = files ?? (await hostFiles());
  const j = (...names: string[]) => names.reduce((dir, name) => f.join(dir, name), out);
  return {
    settings: j(RUN_SETTINGS),
    /** One language's result of the base or the aligned model. */
    result: (label: "base" | "aligned", lang: string) => j(label, `${lang}.json`),
    /** The finished adapter (only ever a complete one: it replaces itself with training/'s files as a whole). */
    adapter: j("adapter"),
    /** The trainer's working folder with its resumable checkpoints. */
    training: j("training"),
    interpDir: j("interp"),
    /** Logit Lens / PCA of one model. */
    interp: (label: string) => j("interp", `${label}.json`),
  };
}

export type RunPaths = Awaited<ReturnType<typeof runPaths>>;

/** Writes JSON atomically, creating its folder, through `files` (default: the host's). */
export async function saveJson(file: string, value: unknown, files?: Files): Promise<void> {
  await (files ?? (await hostFiles())).writeAtomic(file, [JSON.stringify(value, null, 1) + "\n"]);
}

/**
 * Reads a JSON file this run folder wrote (its shape is trusted, as the run wrote it).
 * @param files where it is (default: the host's)
 * @throws DataError naming the file when it is no longer JSON (a full disk, an edit gone wrong)
 */
export async function readJson<T>(file: string, files?: Files): Promise<T> {
  try {
    return parseJson(await (files ?? (await hostFiles())).readText(file)) as T;
  } catch (e) {
    throw new DataError(file, `cannot be read back (${(e as Error).message}); remove it to recompute what it held`);
  }
}

/**
 * The settings that decide the numbers: all but the languages list (each language is stored on
 * its own, so a rerun may add languages), the evaluation batch size, the checkpoint interval
 * (training resumes bit for bit whatever it is) and the interp switch.
 * @param data the data source's description
 */
export function fingerprint(cfg: AlignConfig, data: string): Record<string, unknown> {
  const { batchSize: _, ...evaluation } = cfg.evaluation;
  return { modelDir: cfg.modelDir, data, task: cfg.task, trainTask: cfg.trainTask, train: cfg.train, target: cfg.target, evaluation, training: decidingTraining(cfg.training) };
}

/** A training recipe less the options that leave its numbers as they are (lora/trainer.ts's decidingOptions). */
export function decidingTraining<T extends { hyper: { saveSteps?: number; gradientCheckpointing?: boolean } }>(training: T): Record<string, unknown> {
  return { ...training, hyper: decidingOptions(training.hyper) };
}

/** A JSON value as the run.json diff shows it; absent values read "unset". */
function shown(v: unknown): string {
  return v === undefined ? "unset" : JSON.stringify(v);
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The settings that differ between a saved run.json and this run, one entry per leaf, nested
 * keys joined by dots: `evaluation.limit was 20, now 10`. `now` is compared as JSON (undefined
 * fields are absent, as in the saved file).
 */
export function settingsDiff(saved: unknown, now: unknown, path = ""): string[] {
  return leafDiff(saved, now === undefined ? undefined : JSON.parse(JSON.stringify(now)), path);
}

/** settingsDiff on two parsed JSON values. */
function leafDiff(saved: unknown, current: unknown, path: string): string[] {
  if (isRecord(saved) && isRecord(current)) {
    const keys = [...new Set([...Object.keys(saved), ...Object.keys(current)])];
    return keys.flatMap((k) => leafDiff(saved[k], current[k], path ? `${path}.${k}` : k));
  }
  if (JSON.stringify(saved) === JSON.stringify(current)) return [];
  return [`${path || "settings"} was ${shown(saved)}, now ${shown(current)}`];
}

/**
 * settingsDiff of the top-level keys of `now` only: a key that an older file has in addition
 * (written by an earlier version) is ignored.
 */
export function changedSettings(saved: Record<string, unknown>, now: Record<string, unknown>): string[] {
  return Object.keys(now).flatMap((k) => settingsDiff(saved[k], now[k], k));
}

/**
 * `saved`, read from `file`, when it is a record of `kind` (a JSON object with its keys), so that a
 * foreign file of the same name (`[1,2,3]`, another program's results) is named as such rather
 * than diffed key by key.
 * @throws DataError naming the file and what it should hold
 */
export function savedRecord(file: string, saved: unknown, kind: SavedKind): Record<string, unknown> {
  if (isRecord(saved) && kind.keys.every((k) => k in saved)) return saved;
  const keys = `${kind.keys.slice(0, -1).join(", ")} and ${kind.keys.at(-1)}`;
  throw new DataError(file, `is not ${kind.what} (a JSON object with ${keys}); choose another --out or remove it`);
}

/**
 * Checks a saved run.json against this run's settings (see {@link fingerprint}).
 * @returns true when the folder holds a run with these settings (to resume), false when it
 *   holds none yet
 * @param kind what the file must be (ALIGN_SETTINGS for run.json)
 * @param files where it is (default: the host's)
 * @throws DataError naming the file when it is not of `kind`, or naming every differing setting
 *   when it holds another run.
 */
export async function checkSettings(file: string, settings: Record<string, unknown>, kind: SavedKind, files?: Files): Promise<boolean> {
  files ??= await hostFiles();
  if (!(await files.exists(file))) return false;
  const saved = savedRecord(file, await readJson<unknown>(file, files), kind);
  const differ = changedSettings(saved, settings);
  if (differ.length > 0) throw new DataError(file, `holds a run with other settings (${differ.join("; ")}); choose another --out or remove the folder`);
  return true;
}
