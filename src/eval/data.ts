import { DataError, type DataIssue } from "../io/data_error.ts";
import type { Lang } from "./languages.ts";
import type { DataSource } from "./source.ts";
import type { TaskSpec } from "./tasks.ts";

/**
 * Reading a task's test file for one language, checked against the English file.
 *
 * The files are parallel (../shared/data/README.md): item i of every language translates item i
 * of English and has its class. So the class of item i is read from the English answer, and the
 * label word of each class in a language is the answer its items carry (e.g. Japanese SNLI
 * says 中性, not 中立). Nothing about label words is hand-written.
 */

/** What to do with an invalid item: throw a DataError, or leave it out and list it. */
export type OnInvalid = "error" | "skip";

/** One valid test item. */
export interface Item {
  /** Index in the file (the same item in every language). */
  index: number;
  /** The input fields by JSON key (task.fields). */
  fields: Record<string, string>;
  /** Class index into task.classes, from the English file. */
  label: number;
}

/** A task's test items in one language, validated, with their classes and label words. */
export interface TaskData {
  task: TaskSpec;
  lang: Lang;
  /** The language's test file, as the source names it. */
  file: string;
  /** Items in file order, invalid ones left out. */
  items: Item[];
  /** The answer word of each class in this language, in task.classes order. */
  labelWords: string[];
  /** Items left out (with onInvalid "skip"); empty otherwise. */
  skipped: DataIssue[];
}

/** A string field of a JSON item, or why it is unusable. */
function field(item: unknown, key: string): string | { problem: string } {
  if (typeof item !== "object" || item === null || Array.isArray(item)) return { problem: "item is not a JSON object" };
  const v = (item as Record<string, unknown>)[key];
  if (v === undefined) return { problem: "missing field" };
  if (typeof v !== "string") return { problem: `field must be a string, got ${JSON.stringify(v)}` };
  if (v.trim() === "") return { problem: "empty field" };
  return v;
}

/**
 * Reads a JSON file that must hold an array of items.
 * @throws DataError for a missing file, invalid JSON or a non-array.
 */
export async function readItems(source: DataSource, path: string): Promise<unknown[]> {
  const data = await source.readJson(path);
  if (!Array.isArray(data)) throw new DataError(source.describe(path), "expected a JSON array of items");
  return data;
}

/**
 * Validates the given string fields of every item of an array.
 * @returns per item its fields, or null for an invalid item (listed in `skipped`)
 * @throws DataError (file, index, field) for the first invalid item when onInvalid is "error".
 */
export function checkFields(file: string, items: readonly unknown[], keys: readonly string[], onInvalid: OnInvalid, skipped: DataIssue[]): (Record<string, string> | null)[] {
  return items.map((item, index) => {
    const out: Record<string, string> = {};
    for (const key of keys) {
      const v = field(item, key);
      if (typeof v !== "string") {
        if (onInvalid === "error") throw new DataError(file, v.problem, index, key);
        skipped.push({ file, index, field: key, problem: v.problem });
        return null;
      }
      out[key] = v;
    }
    return out;
  });
}

/**
 * Loads `task`'s test file for `lang` and the English file it is parallel to.
 * Checks: both files exist and hold arrays of equal length; every item has its input fields and
 * an `answer`; every English answer is one of task.classes; within the language, all items of a
 * class carry the same answer word (the most common one; any other is "outside the label set")
 * and no two classes share a word.
 * @throws DataError naming the file (and index and field) for any failed check, except that
 *   with onInvalid "skip" invalid items are left out and listed instead.
 */
export async function loadTaskData(source: DataSource, task: TaskSpec, lang: Lang, onInvalid: OnInvalid = "error"): Promise<TaskData> {
  const enPath = task.testFile("en");
  const path = task.testFile(lang);
  const file = source.describe(path);
  const enFile = source.describe(enPath);
  const en = await readItems(source, enPath);
  const raw = lang === "en" ? en : await readItems(source, path);
  if (raw.length !== en.length) throw new DataError(file, `has ${raw.length} items but ${enFile} has ${en.length}: the files must be parallel`);

  const skipped: DataIssue[] = [];
  const enAnswers = checkFields(enFile, en, ["answer"], onInvalid, skipped);
  const local = checkFields(file, raw, [...task.fields.map((f) => f.key), "answer"], onInvalid, skipped);
  const labels = enAnswers.map((a, index) => {
    if (a === null) return null;
    const c = task.classes.indexOf(a["answer"]!);
    if (c >= 0) return c;
    const reason = `answer "${a["answer"]}" is outside the label set (${task.classes.join(", ")})`;
    if (onInvalid === "error") throw new DataError(enFile, reason, index, "answer");
    skipped.push({ file: enFile, index, field: "answer", problem: reason });
    return null;
  });

  // The label word of class c: the most common answer among its items.
  const counts = task.classes.map(() => new Map<string, number>());
  local.forEach((f, i) => {
    const c = labels[i];
    if (f !== null && c !== null && c !== undefined) counts[c]!.set(f["answer"]!, (counts[c]!.get(f["answer"]!) ?? 0) + 1);
  });
  const labelWords = counts.map((m, c) => {
    const best = [...m.entries()].sort((a, b) => b[1] - a[1])[0];
    if (!best) throw new DataError(file, `no valid item of class "${task.classes[c]}": its label word cannot be derived`);
    return best[0];
  });
  const dup = labelWords.find((w, c) => labelWords.indexOf(w) !== c);
  if (dup !== undefined) throw new DataError(file, `two classes share the answer word "${dup}"`);

  const items: Item[] = [];
  local.forEach((f, index) => {
    const label = labels[index];
    if (f === null || label === null || label === undefined) return;
    if (f["answer"] !== labelWords[label]) {
      const reason = `answer "${f["answer"]}" is outside the label set (${labelWords.join(", ")}); its class is "${task.classes[label]}" (${labelWords[label]})`;
      if (onInvalid === "error") throw new DataError(file, reason, index, "answer");
      skipped.push({ file, index, field: "answer", problem: reason });
      return;
    }
    const fields: Record<string, string> = {};
    for (const { key } of task.fields) fields[key] = f[key]!;
    items.push({ index, fields, label });
  });
  // For English both checks read the same file: list each bad item once.
  const unique = skipped.filter((s, i) => skipped.findIndex((t) => t.file === s.file && t.index === s.index) === i);
  return { task, lang, file, items, labelWords, skipped: unique };
}
