import type { FieldWords } from "./fields.ts";
import type { Lang } from "./languages.ts";

/**
 * The three classification tasks of the paper (Zhang et al. 2024):
 * Amazon Reviews Polarity (sentiment, 2-shot), SNLI (natural language inference, 6-shot) and
 * PAWS (paraphrase identification, 4-shot), each with 20 parallel test files.
 */
export type TaskId = "snli" | "emotion" | "paws";

/** One input field of an item: its JSON key and the word written before it in a prompt. */
export interface InputField {
  key: string;
  label(words: FieldWords): string;
}

export interface TaskSpec {
  id: TaskId;
  title: string;
  /** Relative path of a language's test file in the release's layout. */
  testFile(lang: Lang): string;
  /** The input fields, in prompt order; every item also has `answer`. */
  fields: readonly InputField[];
  /** Which field word labels the answer line. */
  answerField: keyof FieldWords;
  /** The English answer words, which name the classes; their order is the class index order. */
  classes: readonly string[];
  /** The paper's number of demonstrations. */
  shots: number;
}

export const TASKS: Record<TaskId, TaskSpec> = {
  emotion: {
    id: "emotion",
    title: "Amazon Reviews Polarity",
    testFile: (lang) => `ap_emotion/emotion_${lang}500_test.json`,
    fields: [{ key: "input", label: (w) => w.review }],
    answerField: "emotion",
    classes: ["positive", "negative"],
    shots: 2,
  },
  snli: {
    id: "snli",
    title: "SNLI",
    testFile: (lang) => `snli/snli_${lang}600_test.json`,
    fields: [
      { key: "premise", label: (w) => w.premise },
      { key: "hypothesis", label: (w) => w.hypothesis },
    ],
    answerField: "answer",
    classes: ["entailment", "neutral", "contradiction"],
    shots: 6,
  },
  paws: {
    id: "paws",
    title: "PAWS",
    testFile: (lang) => `paws/paws_${lang}500_test.json`,
    fields: [
      { key: "sentence1", label: (w) => `${w.sentence} 1` },
      { key: "sentence2", label: (w) => `${w.sentence} 2` },
    ],
    answerField: "answer",
    classes: ["same", "different"],
    shots: 4,
  },
};

/**
 * The task named `name` ("snli", "emotion" or "paws"; "ap_emotion" is accepted for emotion).
 * @throws RangeError for any other name.
 */
export function getTask(name: string): TaskSpec {
  const id = name === "ap_emotion" ? "emotion" : name;
  if (!Object.hasOwn(TASKS, id)) throw new RangeError(`unknown task "${name}"; use snli, emotion or paws`);
  return TASKS[id as TaskId];
}
