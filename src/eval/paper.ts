import { DataError } from "../io/data_error.ts";
import { hostFiles, hostPath, type Files } from "../io/files.ts";
import { parseJson } from "../io/json.ts";
import { LANGUAGES, type Lang } from "./languages.ts";
import type { TaskId, TaskSpec } from "./tasks.ts";

/**
 * The authors' evaluation prompts as data: `paper_prompts.json` beside this file, a byte-exact
 * copy of `qalign/prompts/paper_prompts.json` of the shared data (test/eval_paper.test.ts checks
 * it), taken from the public scripts of Zhang et al. (2024), github.com/Shimao-Zhang/
 * LLM-Multilingual-Learner at the commit its `source` names: `snli_eval_6shot_enout.py`,
 * `emotion_eval_2shot_enout.py`, `paws_eval_4shot_enout.py` (English answer words in every
 * language: the scripts behind the paper's tables) and `emotion_eval_2shot.py` (native words).
 *
 * Per script and language it holds the fixed, hand-translated demonstrations and the template
 * of a whole prompt, `{demonstrations}` and the item's fields in braces, ending in the open quote
 * before the answer; per script the answer-word tables (`positive_answers`, `neutral_answers`,
 * `negative_answers`, by language). Emotion items have no field header: the review stands alone.
 */

/** Which answer words the prompts use: English in every language (the paper's tables) or the language's own. */
export type LabelLanguage = "english" | "native";

/** One script's prompt of one language. */
export interface PaperLanguage {
  /** The k-shot block, byte for byte as in the script (trailing spaces included). */
  demonstrations: string;
  /** The whole prompt of an item: `{demonstrations}` and `{<field>}` placeholders. */
  template: string;
}

/** The three roles of the scripts' answer tables, in the order they test them. */
const ANSWER_ROLES = ["positive_answers", "neutral_answers", "negative_answers"] as const;
export type AnswerRole = (typeof ANSWER_ROLES)[number];

/** One evaluation script, as the asset records it. */
export interface PaperScript {
  /** The script's file name in the authors' repository. */
  script: string;
  languages: Record<Lang, PaperLanguage>;
  /** Role -> language -> answer word, as the script's dicts write them (empty strings and gaps included). */
  labelDicts: Partial<Record<AnswerRole, Record<string, string>>>;
}

/** The asset, parsed and checked. */
export interface PaperPrompts {
  /** Repository and commit the prompts were taken from. */
  source: string;
  /** The asset's path, for messages. */
  file: string;
  /** By script key: `snli`, `emotion`, `paws` (English words) and `emotion_native`. */
  scripts: Record<string, PaperScript>;
}

/**
 * Where the asset lives in the package, beside this module (on Node a file: URL; {@link hostPath} gives its path).
 * Typed as the global URL: inferred, the declaration would name Node's `import("url").URL`, which a consumer without @types/node cannot resolve.
 */
export const PAPER_PROMPTS_URL: URL = new URL("./paper_prompts.json", import.meta.url);

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Checks the parsed asset's shape: a `source` string, and per task a `script`, every one of the
 * 20 languages with string `demonstrations` and `template`, and `label_dicts` of string tables.
 * @throws DataError naming the file and the first bad field (dotted path).
 */
export function parsePaperPrompts(json: unknown, file: string): PaperPrompts {
  const fail = (field: string, problem: string): never => {
    throw new DataError(file, problem, undefined, field);
  };
  if (!isRecord(json)) return fail("(root)", "expected a JSON object");
  if (typeof json["source"] !== "string") fail("source", "expected the source repository and commit as a string");
  if (!isRecord(json["tasks"])) fail("tasks", "expected an object of scripts");
  const scripts: Record<string, PaperScript> = {};
  for (const [key, raw] of Object.entries(json["tasks"] as Record<string, unknown>)) {
    if (!isRecord(raw)) fail(`tasks.${key}`, "expected an object");
    const t = raw as Record<string, unknown>;
    if (typeof t["script"] !== "string") fail(`tasks.${key}.script`, "expected the script's file name");
    if (!isRecord(t["languages"])) fail(`tasks.${key}.languages`, "expected an object of languages");
    const languages = {} as Record<Lang, PaperLanguage>;
    for (const lang of LANGUAGES) {
      const l = (t["languages"] as Record<string, unknown>)[lang];
      if (!isRecord(l) || typeof l["demonstrations"] !== "string" || typeof l["template"] !== "string") {
        fail(`tasks.${key}.languages.${lang}`, "expected {demonstrations, template} strings");
      }
      const { demonstrations, template } = l as { demonstrations: string; template: string };
      languages[lang] = { demonstrations, template };
    }
    if (!isRecord(t["label_dicts"])) fail(`tasks.${key}.label_dicts`, "expected the answer tables");
    const labelDicts: PaperScript["labelDicts"] = {};
    for (const [role, table] of Object.entries(t["label_dicts"] as Record<string, unknown>)) {
      if (!(ANSWER_ROLES as readonly string[]).includes(role)) fail(`tasks.${key}.label_dicts.${role}`, `unknown role; expected one of ${ANSWER_ROLES.join(", ")}`);
      if (!isRecord(table) || !Object.values(table).every((w) => typeof w === "string")) fail(`tasks.${key}.label_dicts.${role}`, "expected language -> word strings");
      labelDicts[role as AnswerRole] = table as Record<string, string>;
    }
    scripts[key] = { script: t["script"] as string, languages, labelDicts };
  }
  return { source: json["source"] as string, file, scripts };
}

let loaded: Promise<PaperPrompts> | null = null;

/**
 * The package's prompt asset, read and checked once per process.
 * @param files how to read it (default: the host's, io/files.ts); only the first call's is used
 * @throws DataError when the file is missing, not JSON, or malformed (see parsePaperPrompts).
 */
export function paperPrompts(files?: Files): Promise<PaperPrompts> {
  loaded ??= (async () => {
    files ??= await hostFiles();
    const file = await hostPath(PAPER_PROMPTS_URL);
    let text: string;
    try {
      text = await files.readText(file);
    } catch {
      throw new DataError(file, "missing file: the package's copy of the authors' prompts");
    }
    let json: unknown;
    try {
      json = parseJson(text);
    } catch (e) {
      throw new DataError(file, `not valid JSON: ${(e as Error).message}`);
    }
    return parsePaperPrompts(json, file);
  })();
  return loaded;
}

/** The asset key of a task's script: the task id for English words, `<task>_native` for native ones. */
export function scriptKey(task: TaskId, labels: LabelLanguage): string {
  return labels === "english" ? task : `${task}_native`;
}

/** The authors' script for `task` with `labels` answer words, or null where they wrote none (native-label SNLI and PAWS). */
export function findScript(prompts: PaperPrompts, task: TaskSpec, labels: LabelLanguage): PaperScript | null {
  return prompts.scripts[scriptKey(task.id, labels)] ?? null;
}

/**
 * The authors' script for `task` with `labels` answer words, and each class's role in its
 * tables (class c is the role whose English word is task.classes[c]).
 * @throws RangeError when the authors have no such script (native-label SNLI or PAWS);
 *   DataError when the script's tables lack an English word of the task.
 */
export function paperScript(prompts: PaperPrompts, task: TaskSpec, labels: LabelLanguage): { script: PaperScript; roles: AnswerRole[] } {
  const key = scriptKey(task.id, labels);
  const script = findScript(prompts, task, labels);
  if (!script) {
    const have = Object.keys(prompts.scripts).join(", ");
    throw new RangeError(`the authors' scripts have no ${labels}-label ${task.title} evaluation (scripts in ${prompts.file}: ${have}); use --labels english`);
  }
  const roles = task.classes.map((word) => {
    const role = ANSWER_ROLES.find((r) => script.labelDicts[r]?.["en"] === word);
    if (!role) throw new DataError(prompts.file, `no answer table has the English word "${word}"`, undefined, `tasks.${key}.label_dicts`);
    return role;
  });
  return { script, roles };
}

/**
 * The answer word of each class in `lang` as the script's tables write it.
 * @throws DataError when the table has no (or an empty) word for `lang`.
 */
export function tableWords(prompts: PaperPrompts, task: TaskSpec, labels: LabelLanguage, lang: Lang): string[] {
  const { script, roles } = paperScript(prompts, task, labels);
  return roles.map((role) => {
    const w = script.labelDicts[role]![lang];
    if (!w) throw new DataError(prompts.file, `no ${role} word for ${lang}`, undefined, `tasks.${scriptKey(task.id, labels)}.label_dicts.${role}.${lang}`);
    return w;
  });
}

/**
 * The authors' prompt of one item: the language's template with `{demonstrations}` and each
 * `{<field>}` replaced in one pass over the template (so braces inside the texts stay as they are).
 * @param fields the item's input fields by JSON key (task.fields)
 * @throws DataError when the template names a placeholder that is neither.
 */
export function renderPaperPrompt(prompts: PaperPrompts, script: PaperScript, key: string, lang: Lang, fields: Readonly<Record<string, string>>): string {
  const { template, demonstrations } = script.languages[lang];
  return template.replace(/\{(\w+)\}/g, (_, name: string) => {
    if (name === "demonstrations") return demonstrations;
    const v = fields[name];
    if (v === undefined) throw new DataError(prompts.file, `template placeholder {${name}} is not a field of the item`, undefined, `tasks.${key}.languages.${lang}.template`);
    return v;
  });
}

/** The common leading characters of `words` ("" when they begin differently). */
export function commonStart(words: readonly string[]): string {
  const chars = words.map((w) => Array.from(w));
  const first = chars[0] ?? [];
  let n = 0;
  while (n < first.length && chars.every((c) => c[n] === first[n])) n++;
  return first.slice(0, n).join("");
}

/**
 * The text every prompt of `lang` starts with: the template up to its first item field, with
 * the demonstrations in place (the part whose KV cache evaluation computes once).
 */
export function paperPrefix(script: PaperScript, lang: Lang): string {
  const { template, demonstrations } = script.languages[lang];
  const first = template.search(/\{(?!demonstrations\})\w+\}/);
  const head = first < 0 ? template : template.slice(0, first);
  return head.replaceAll("{demonstrations}", demonstrations);
}
