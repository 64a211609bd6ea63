import { Rng } from "../tensor/random.ts";
import { loadTaskData, type Item, type OnInvalid, type TaskData } from "./data.ts";
import { fieldWords, type FieldWords } from "./fields.ts";
import type { Lang } from "./languages.ts";
import type { DataSource } from "./source.ts";
import type { TaskSpec } from "./tasks.ts";

/**
 * k-shot prompts in the format of the paper's evaluation scripts (Zhang et al. 2024; e.g.
 * snli_eval_6shot_enout.py in Shimao-Zhang/LLM-Multilingual-Learner): each demonstration is its fields, one per line as `<word>: <text>`, then
 * `<answer word>: "<label>"`; demonstrations are joined by newlines, and the scored item ends
 * with `<answer word>: "` so that the next token starts the label. For Chinese SNLI:
 *
 *     前提: ...\n假设: ...\n答案: "蕴含"\n ... 前提: ...\n假设: ...\n答案: "
 *
 * Every item of a language shares the same demonstrations, so the prompt splits into a shared
 * prefix (the demonstrations) and the item, and the prefix's KV cache is computed once.
 */

/**
 * Picks `shots` demonstrations that cover the classes: round robin over the classes in class
 * order (as the paper's prompts alternate them), each time a seeded-random unused item of that
 * class; a class that runs out is passed over. Depends only on the items' indices and classes,
 * so parallel files get the same demonstrations in every language. Also draws the
 * class-balanced `limit` subset of scored items (see {@link languagePrompts}).
 * @param items the candidates, in file order
 * @returns the demonstrations in prompt order (fewer than `shots` when too few items exist)
 */
export function selectDemos(items: readonly Item[], numClasses: number, shots: number, rng: Rng): Item[] {
  const pools = Array.from({ length: numClasses }, (_, c) => rng.shuffle(items.filter((it) => it.label === c)));
  const demos: Item[] = [];
  while (demos.length < shots && pools.some((p) => p.length > 0)) {
    for (const pool of pools) {
      const next = pool.shift();
      if (next && demos.length < shots) demos.push(next);
    }
  }
  return demos;
}

/**
 * At most `limit` of `items` (all when limit is undefined or not smaller): class-balanced like
 * the full test sets, so that a small --limit is not dominated by one class by chance (a
 * constant predictor then scores 1 / classes, not anything), drawn by {@link selectDemos} with
 * `rng`, in file order. Depends only on indices and classes, so every language gets the same items.
 */
export function limitItems(items: Item[], numClasses: number, limit: number | undefined, rng: Rng): Item[] {
  if (limit === undefined || limit >= items.length) return items;
  return selectDemos(items, numClasses, limit, rng).sort((a, b) => a.index - b.index);
}

/**
 * One item as prompt text: `<word>: <text>` per field, then `<answer word>: "` followed by
 * `<label>"` for a demonstration (label given) or nothing for the scored item.
 */
export function formatItem(task: TaskSpec, words: FieldWords, item: Item, label?: string): string {
  const lines = task.fields.map((f) => `${f.label(words)}: ${item.fields[f.key]}`);
  lines.push(`${words[task.answerField]}: "${label === undefined ? "" : `${label}"`}`);
  return lines.join("\n");
}

/**
 * The shared prefix: the demonstrations with their label words, each followed by a newline
 * ("" for zero shots), so that prefix + formatItem(item) is the whole prompt.
 * @param labelWords the answer word of each class, in class order
 */
export function formatPrefix(task: TaskSpec, words: FieldWords, demos: readonly Item[], labelWords: readonly string[]): string {
  return demos.map((d) => `${formatItem(task, words, d, labelWords[d.label])}\n`).join("");
}

/** How the prompts of a language are chosen; see {@link languagePrompts}. */
export interface PromptOptions {
  /** Demonstrations per prompt; default the task's (2 / 6 / 4). */
  shots?: number;
  /** Seeds the demonstrations and the limit subset; default 0. */
  seed?: number;
  /** Keep at most this many scored items: a seeded, class-balanced subset, the same indices in every language. */
  limit?: number;
  /** Use the English answer words in every language (the paper's SNLI and PAWS setting). */
  englishLabels?: boolean;
  onInvalid?: OnInvalid;
}

/** The prompts of one language: shared prefix, scored items and their full prompt texts. */
export interface LanguagePrompts {
  data: TaskData;
  /** The answer word of each class as the prompts write it (the language's, or English). */
  labelWords: string[];
  demos: Item[];
  /** The scored items, in file order (never a demonstration). */
  items: Item[];
  /** The demonstrations' text, shared by every prompt. */
  prefix: string;
  /** prefix + the item, ending `<answer word>: "`, per scored item. */
  prompts: string[];
}

/**
 * Loads `task` in `lang` and builds its k-shot prompts: demonstrations by {@link selectDemos},
 * then the `limit` subset of the other items, class-balanced by the same function and seeded
 * generator. Both depend only on indices and English classes, so every language gets the same
 * items.
 * @throws DataError for bad data (see loadTaskData); RangeError when no item is left to score.
 */
export async function languagePrompts(source: DataSource, task: TaskSpec, lang: Lang, opts: PromptOptions = {}): Promise<LanguagePrompts> {
  const data = await loadTaskData(source, task, lang, opts.onInvalid ?? "error");
  const words = await fieldWords(source, lang);
  const labelWords = opts.englishLabels ? [...task.classes] : data.labelWords;
  const rng = new Rng(opts.seed ?? 0);
  const demos = selectDemos(data.items, task.classes.length, opts.shots ?? task.shots, rng);
  const demoSet = new Set(demos);
  const items = limitItems(
    data.items.filter((it) => !demoSet.has(it)),
    task.classes.length,
    opts.limit,
    rng,
  );
  if (items.length === 0) throw new RangeError(`${data.file}: no item left to score after ${demos.length} demonstrations`);
  const prefix = formatPrefix(task, words, demos, labelWords);
  return { data, labelWords, demos, items, prefix, prompts: items.map((it) => prefix + formatItem(task, words, it)) };
}
