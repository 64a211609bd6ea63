import type { Tokenizer } from "../model/tokenizer.ts";
import { Rng } from "../tensor/random.ts";
import { authorsRule, type AuthorsRule } from "./authors_scoring.ts";
import { authorsTokenIds } from "./authors_tokens.ts";
import { loadTaskData, type Item, type OnInvalid, type TaskData } from "./data.ts";
import { labelTokenIds, type Vocabulary } from "./label_tokens.ts";
import type { Lang } from "./languages.ts";
import { commonStart, findScript, paperPrefix, paperPrompts, paperScript, renderPaperPrompt, scriptKey, tableWords, type LabelLanguage } from "./paper.ts";
import { languagePrompts, limitItems } from "./prompt.ts";
import type { DataSource } from "./source.ts";
import type { TaskSpec } from "./tasks.ts";

/**
 * Evaluation protocols: how the prompts of a language are built and which tokens score a class.
 *
 * - `paper`: the authors' experiment exactly (Zhang et al. 2024; prompts from paper.ts): their
 *   fixed, hand-translated demonstrations and the language's template, English answer words
 *   (the `_enout` scripts behind the paper's tables) or with `labels: "native"` the native-label
 *   emotion script, every item of the test file scored, and their token sets (authors_tokens.ts).
 *   Native-label emotion in Thai follows the authors' rule: both Thai words begin with เชิง, so
 *   the prompt's tokens are followed by the tokens of that common start and the classes are
 *   scored on the rest (บวก / ลบ); here the common start is derived from the table's words,
 *   which gives เชิง for Thai and nothing for the other 19 languages.
 * - `qalign`: qalign's own (prompt.ts): demonstrations drawn from the test file by seed (the
 *   rest is scored), field words per language, native or English words, byte-level token sets
 *   (label_tokens.ts).
 */
export type Protocol = "paper" | "qalign";

export const PROTOCOLS: readonly Protocol[] = ["paper", "qalign"];

/**
 * The default protocol everywhere (library and command line): the paper's, since the
 * experiment qalign runs is the paper's and its numbers are only comparable under its prompts.
 */
export const DEFAULT_PROTOCOL: Protocol = "paper";

/** What a protocol's prompts depend on. */
export interface ProtocolOptions {
  /** Default DEFAULT_PROTOCOL ("paper"). */
  protocol?: Protocol;
  /** Default: "english" for paper (its tables), "native" for qalign. */
  labels?: LabelLanguage;
  /** qalign only: demonstrations per prompt; default the task's (2 / 6 / 4). */
  shots?: number;
  /** Seeds the `limit` subset (and qalign's demonstrations); default 0. */
  seed?: number;
  /** Keep at most this many scored items: a seeded, class-balanced subset, the same indices in every language. */
  limit?: number;
  onInvalid?: OnInvalid;
}

/** The prompts of one language under a protocol, and how to score them. */
export interface ProtocolPrompts {
  protocol: Protocol;
  labels: LabelLanguage;
  data: TaskData;
  /** The answer word of each class as the prompts write it. */
  labelWords: string[];
  /** Demonstrations per prompt. */
  shots: number;
  /** Test-file indices of the demonstrations (qalign); empty when they are not from the test file (paper). */
  demos: number[];
  /** The scored items, in file order. */
  items: Item[];
  /** The text every prompt starts with (its KV cache is computed once). */
  prefix: string;
  /** The whole prompt of each scored item, ending in the open quote before the answer. */
  prompts: string[];
  /** Text whose tokens follow every prompt's tokens (the authors' Thai rule); "" for none. */
  continuation: string;
  /** Per class, the word whose token set scores it (labelWords, less `continuation`). */
  scoredWords: string[];
  /** Which token-set rule scores the classes. */
  tokenRule: "authors" | "qalign";
  /** The authors' choice and correctness rule (`--scoring authors`), or null where they have no script for these words. */
  authors: AuthorsRule | null;
}

/** The labels a protocol uses when none are asked for. */
export function defaultLabels(protocol: Protocol): LabelLanguage {
  return protocol === "paper" ? "english" : "native";
}

/**
 * Builds the prompts of `task` in `lang` under `opts.protocol`, loading and checking the
 * language's test file against the English one (classes by index, loadTaskData).
 * @throws DataError for bad data or a malformed prompt asset; RangeError when the paper
 *   protocol is asked for words the authors never scripted (native SNLI / PAWS), or no item is
 *   left to score.
 */
export async function buildPrompts(source: DataSource, task: TaskSpec, lang: Lang, opts: ProtocolOptions = {}): Promise<ProtocolPrompts> {
  const protocol = opts.protocol ?? DEFAULT_PROTOCOL;
  const labels = opts.labels ?? defaultLabels(protocol);
  const prompts = await paperPrompts();
  // The authors' rule exists where they wrote a script for these answer words.
  const rule = (): AuthorsRule | null => (findScript(prompts, task, labels) ? authorsRule(prompts, task, labels, lang) : null);
  if (protocol === "qalign") {
    const q = await languagePrompts(source, task, lang, { ...opts, englishLabels: labels === "english" });
    return {
      protocol,
      labels,
      data: q.data,
      labelWords: q.labelWords,
      shots: q.demos.length,
      demos: q.demos.map((d) => d.index),
      items: q.items,
      prefix: q.prefix,
      prompts: q.prompts,
      continuation: "",
      scoredWords: q.labelWords,
      tokenRule: "qalign",
      authors: rule(),
    };
  }
  const { script } = paperScript(prompts, task, labels);
  const key = scriptKey(task.id, labels);
  const data = await loadTaskData(source, task, lang, opts.onInvalid ?? "error");
  const items = limitItems(data.items, task.classes.length, opts.limit, new Rng(opts.seed ?? 0));
  if (items.length === 0) throw new RangeError(`${data.file}: no item to score`);
  const labelWords = labels === "english" ? [...task.classes] : tableWords(prompts, task, labels, lang);
  const continuation = labels === "native" ? commonStart(labelWords) : "";
  return {
    protocol,
    labels,
    data,
    labelWords,
    shots: task.shots,
    demos: [],
    items,
    prefix: paperPrefix(script, lang),
    prompts: items.map((it) => renderPaperPrompt(prompts, script, key, lang, it.fields)),
    continuation,
    scoredWords: labelWords.map((w) => Array.from(w).slice(Array.from(continuation).length).join("")),
    tokenRule: "authors",
    authors: rule(),
  };
}

/**
 * The token ids a prompt runs as: the prompt tokenized whole (special tokens added, as the
 * scripts' `tokenizer(input)` does), then the tokens of `continuation` tokenized on their own,
 * special tokens included (the scripts concatenate `tokenizer("เชิง")['input_ids']`, which under
 * Mistral begins with its BOS).
 */
export function promptIds(tokenizer: Pick<Tokenizer, "encode">, p: Pick<ProtocolPrompts, "continuation">, text: string): number[] {
  const ids = tokenizer.encode(text);
  return p.continuation === "" ? ids : [...ids, ...tokenizer.encode(p.continuation)];
}

/** Per class, the ids of the tokens that score it under the prompts' token rule (sorted, unique). */
export function classTokenIds(tokenizer: Vocabulary & Pick<Tokenizer, "encode">, p: Pick<ProtocolPrompts, "scoredWords" | "tokenRule">): number[][] {
  return p.scoredWords.map((w) => (p.tokenRule === "authors" ? authorsTokenIds(tokenizer, w) : labelTokenIds(tokenizer, w)));
}

/**
 * Every setting a protocol implies, in words, for report.md and results.json: where the
 * demonstrations and templates come from, which answer words, which items are scored, which
 * token sets score a class, and which rule judges an item (`scoring`, default "index").
 */
export async function protocolSettings(task: TaskSpec, opts: ProtocolOptions & { scoring?: string }): Promise<Record<string, string>> {
  const protocol = opts.protocol ?? DEFAULT_PROTOCOL;
  const paper = protocol === "paper";
  const c = { labels: opts.labels ?? defaultLabels(protocol), shots: paper ? task.shots : (opts.shots ?? task.shots), seed: opts.seed ?? 0, limit: opts.limit, scoring: opts.scoring ?? "index" };
  const source = (await paperPrompts()).source;
  const subset = c.limit !== undefined ? `a class-balanced subset of at most ${c.limit} per language (seed ${c.seed}), the same indices in every language` : "";
  return {
    protocol: paper ? `paper: the authors' evaluation scripts (${source})` : "qalign: qalign's own prompts",
    answer_words:
      c.labels === "english"
        ? `English in every language${paper ? " (the _enout scripts behind the paper's tables)" : ""}`
        : paper
          ? "each language's, from the authors' native-label script's table (Thai: the tokens of เชิง follow the prompt, then บวก / ลบ)"
          : "each language's, the answers of its test file",
    demonstrations: paper
      ? `the authors' fixed, hand-translated ${c.shots} per language (src/eval/paper_prompts.json)`
      : `${c.shots} drawn from the test file, class by class (seed ${c.seed}), and not scored`,
    prompt_format: paper
      ? `the authors' template per language${task.id === "emotion" ? " (the review text alone, then the emotion line)" : ""}`
      : "qalign's field words per language (question files, else src/eval/fields.ts)",
    items: subset || (paper ? "every item of the test file" : "every item of the test file but the demonstrations"),
    token_sets: paper
      ? "the authors' rule: character prefixes p as '▁'+p and p, the <0xNN> byte of a non-ASCII first character, and on byte-level (Qwen) tokenizers the first token of each prefix"
      : "qalign's rule: byte-level prefixes of the word and of ' '+word (Qwen), or character prefixes with '▁' and the first byte token (sentencepiece)",
    scoring:
      c.scoring === "authors"
        ? "authors: their tie-breaking (random.randint(0, 1) after random.seed(0)) and their check of the chosen word against the item's answer through their tables"
        : "index: the item's class from the English file by index; ties broken uniformly at random (seeded)",
  };
}
