import { DataError, noUsableItems, type DataIssue } from "../io/data_error.ts";
import type { QuestionPair } from "../lora/data.ts";
import { checkFields, readItems, type OnInvalid } from "./data.ts";
import { questionFile } from "./fields.ts";
import { LANGUAGE_NAMES, LANGUAGES, type Lang } from "./languages.ts";
import type { DataSource } from "./source.ts";

/**
 * Question-translation pairs, the training data of question alignment (Zhang et al. 2024):
 * the model learns only to translate task questions into the target language, never
 * to answer them. The release holds SNLI question files for de es it sw zh into English; they
 * are parallel (item i is the same question in every file), so pairs into another target
 * language are built by index (the paper also aligns to non-English target languages), and
 * English as a source language takes its questions from the target file's English answers.
 *
 * The pairs have the LoRA trainer's shape (src/lora/data.ts `QuestionPair`): `input` is the
 * question followed by `Translate the input from <Src> to <Tgt>:` and a newline, `answer` the
 * question in the target language, ending `<answer word>: "` as the evaluation prompts do.
 * Capping, shuffling and the validation split are the trainer's (`splitPairs`).
 */

/** `<question>\nTranslate the input from X to Y:\n` -> the question and X. */
const INSTRUCTION = /^([\s\S]*)\nTranslate the input from (.+) to (.+):\n?$/;

/** The languages with a question file in `source`. */
export async function questionLanguages(source: DataSource): Promise<Lang[]> {
  const has = await Promise.all(LANGUAGES.map((l) => source.has(questionFile(l))));
  return LANGUAGES.filter((_, i) => has[i]);
}

/**
 * The languages {@link questionPairs} takes as sources into `target` (what `--train all` means):
 * those with a question file in `source`, and English when `target` has one (English questions
 * are its answers); never `target` itself. In LANGUAGES' order.
 */
export async function sourceLanguages(source: DataSource, target: Lang): Promise<Lang[]> {
  const available = await questionLanguages(source);
  const english = target !== "en" && available.includes(target);
  return LANGUAGES.filter((l) => l !== target && (available.includes(l) || (l === "en" && english)));
}

/**
 * Builds the training pairs of `langs` into `target`, language by language in file order (the
 * paper's mixtures, e.g. zh + es, are such concatenations).
 * @returns the pairs, and the items left out (onInvalid "skip")
 * @throws DataError when a language has no question file (naming those that exist; English
 *   needs none, its questions being the target file's answers), when the target is also a
 *   source language, when source and target files are not parallel, when an
 *   input lacks the instruction line, when a file has no usable item (e.g. `[]`), or
 *   (onInvalid "error") for an item without a non-empty `input` / `answer`.
 */
export async function questionPairs(
  source: DataSource,
  langs: readonly Lang[],
  target: Lang = "en",
  onInvalid: OnInvalid = "error",
): Promise<{ pairs: QuestionPair[]; issues: DataIssue[] }> {
  const available = await questionLanguages(source);
  // English questions are every file's answers, so English is a source wherever the target has a file.
  const missing = [...langs.filter((l) => l !== "en"), ...(target === "en" ? [] : [target])].find((l) => !available.includes(l));
  if (missing !== undefined) {
    throw new DataError(source.describe(questionFile(missing)), `no question-translation file for "${missing}"; ${source.description} has them for: ${available.join(" ") || "none"}`);
  }
  if (langs.includes(target)) throw new DataError(source.describe(questionFile(target)), `the target language "${target}" is also a training language`);

  const issues: DataIssue[] = [];
  const load = async (lang: Lang) => {
    const path = questionFile(lang);
    const file = source.describe(path);
    const fields = checkFields(file, await readItems(source, path), ["input", "answer"], onInvalid, issues);
    const questions = fields.map((f, index) => {
      if (f === null) return null;
      const m = INSTRUCTION.exec(f["input"]!);
      if (!m) throw new DataError(file, 'expected the input to end with "\\nTranslate the input from <language> to <language>:\\n"', index, "input");
      return { question: m[1]!, from: m[2]!, english: f["answer"]! };
    });
    // An empty file (or one whose items were all skipped) would silently drop its language.
    if (!questions.some((q) => q !== null)) throw noUsableItems(file, questions.length, issues.filter((i) => i.file === file));
    return { file, questions };
  };

  const into = target === "en" ? null : await load(target);
  const pairs: QuestionPair[] = [];
  for (const lang of langs) {
    const { file, questions } =
      lang === "en" ? { ...into!, questions: into!.questions.map((q) => q && { question: q.english, from: LANGUAGE_NAMES.en, english: q.english }) } : await load(lang);
    if (into && into.questions.length !== questions.length) {
      throw new DataError(file, `has ${questions.length} items but ${into.file} has ${into.questions.length}: question files must be parallel`);
    }
    questions.forEach((q, index) => {
      const t = into ? into.questions[index] : q;
      if (!q || !t) return;
      const answer = into ? t.question : t.english;
      pairs.push({ input: `${q.question}\nTranslate the input from ${q.from} to ${LANGUAGE_NAMES[target]}:\n`, answer, file, index });
    });
  }
  return { pairs, issues };
}
