import type { Lang } from "./languages.ts";
import { paperScript, scriptKey, type AnswerRole, type LabelLanguage, type PaperPrompts } from "./paper.ts";
import type { PythonRandom } from "./python_random.ts";
import type { TaskSpec } from "./tasks.ts";

/**
 * The authors' way from class scores to "correct" (Zhang et al. 2024, the evaluation scripts of
 * github.com/Shimao-Zhang/LLM-Multilingual-Learner), for `--scoring authors`: their choice of
 * class, ties included, and their correctness check. qalign's own rule (`--scoring index`)
 * takes the class of an item from the English file by index and breaks ties uniformly; the
 * authors' differs in two ways, both reproduced here bug for bug:
 *
 * - Ties: a class wins only when its sum is strictly larger than every other. Otherwise the
 *   scripts draw `rand = random.randint(0, 1)` (an integer, after `random.seed(0)`) and pick by
 *   thresholds: two tied classes, the first one of the script's pair when rand >= 0.5; all three
 *   (SNLI) tied, positive when rand >= 2/3 and negative when rand <= 1/3, so never neutral.
 * - Correctness: the script appends its answer word for the chosen class to the prompt and
 *   compares it with the item's `answer` through its tables: SNLI and emotion (`_enout`) check
 *   `answer == <role>_answers[lang]`, PAWS `answer == <role>_answers['en']`, native-label
 *   emotion `<role>_answers[lang].startswith(answer)`. Where a table's word never occurs in the
 *   data (SNLI: ja 中立 for 中性, bn এনটেইলমেন্ট for ধারণ করে) that class is never correct; where
 *   the data's words are swapped between classes (Norwegian SNLI answers neutral items
 *   "motsigelse" and contradiction items "nøytral"), the swapped prediction is counted correct.
 */

/** How a script compares its chosen answer word with an item's `answer`. */
type Check = { words: "language" | "english"; compare: "equals" | "startsWith" };

/** Each script's correctness check, read from its final loop (keys as in paper_prompts.json). */
const SCRIPT_CHECKS: Record<string, Check> = {
  snli: { words: "language", compare: "equals" }, // snli_eval_6shot_enout.py
  emotion: { words: "language", compare: "equals" }, // emotion_eval_2shot_enout.py
  paws: { words: "english", compare: "equals" }, // paws_eval_4shot_enout.py
  emotion_native: { words: "language", compare: "startsWith" }, // emotion_eval_2shot.py
};

/** The authors' rule for one task, answer-word language and evaluation language. */
export interface AuthorsRule {
  /** Each class's role in the script's tables (class order of task.classes). */
  roles: AnswerRole[];
  /** Per class, the word the script compares with an item's answer when it chose that class ("" where its table is empty). */
  checkWords: string[];
  compare: Check["compare"];
}

/**
 * The rule of the script behind `task` with `labels` answer words, for `lang`.
 * @throws RangeError when the authors have no such script (see paperScript).
 */
export function authorsRule(prompts: PaperPrompts, task: TaskSpec, labels: LabelLanguage, lang: Lang): AuthorsRule {
  const { script, roles } = paperScript(prompts, task, labels);
  const check = SCRIPT_CHECKS[scriptKey(task.id, labels)];
  if (!check) throw new RangeError(`no correctness check is known for the script ${script.script}`);
  const column = check.words === "english" ? "en" : lang;
  return { roles, checkWords: roles.map((r) => script.labelDicts[r]?.[column] ?? ""), compare: check.compare };
}

/**
 * Whether the script counts an item correct when it chose class `pred`.
 * @param answer the item's `answer` in its language's file
 */
export function authorsCorrect(rule: AuthorsRule, pred: number, answer: string): boolean {
  const word = rule.checkWords[pred]!;
  return rule.compare === "equals" ? word === answer : word.startsWith(answer);
}

/** Which role the scripts pick for a tie among `tied` given the draw r = randint(0, 1). */
function breakTie(tied: ReadonlySet<AnswerRole>, r: number): AnswerRole {
  const pos = tied.has("positive_answers");
  const neu = tied.has("neutral_answers");
  const neg = tied.has("negative_answers");
  if (pos && neu && neg) return r >= 2 / 3 ? "positive_answers" : r <= 1 / 3 ? "negative_answers" : "neutral_answers";
  if (pos && neg) return r >= 0.5 ? "positive_answers" : "negative_answers";
  if (pos && neu) return r >= 0.5 ? "positive_answers" : "neutral_answers";
  return r >= 0.5 ? "neutral_answers" : "negative_answers"; // neutral and negative
}

/**
 * The class the scripts choose from per-class scores: the strict maximum, else a tie broken by
 * one `randint(0, 1)` draw from `rng` (the scripts' stream: PythonRandom seeded 0 per language).
 * @param scores per class, finite (probability sums)
 * @returns the class and whether it was a tie
 * @throws RangeError for a non-finite score (the scripts' comparisons would silently fall through).
 */
export function authorsChoice(rule: AuthorsRule, scores: readonly number[], rng: PythonRandom): { pred: number; tie: boolean } {
  if (!scores.every(Number.isFinite)) throw new RangeError(`authors' scoring: class scores must be finite, got ${scores.join(", ")}`);
  const best = Math.max(...scores);
  const top = scores.flatMap((s, c) => (s === best ? [c] : []));
  if (top.length === 1) return { pred: top[0]!, tie: false };
  const role = breakTie(new Set(top.map((c) => rule.roles[c]!)), rng.randint(0, 1));
  return { pred: rule.roles.indexOf(role), tie: true };
}
