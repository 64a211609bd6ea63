/**
 * Probe sets from the evaluation data: the same k-shot prompts, items and label-token sets as
 * `qalign eval` (src/eval), so that the lens reads the distribution that evaluation scores.
 */
import { truncateLeft } from "../eval/batch.ts";
import { labelTokenIds } from "../eval/label_tokens.ts";
import type { Lang } from "../eval/languages.ts";
import { languagePrompts, type PromptOptions } from "../eval/prompt.ts";
import type { DataSource } from "../eval/source.ts";
import type { TaskSpec } from "../eval/tasks.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { ProbeSet } from "./probe.ts";

/** Evaluation's prompt options (shots, seed, limit, englishLabels, onInvalid), and a length cap. */
export interface ProbeSetOptions extends PromptOptions {
  /** Longest prompt in tokens; longer ones lose their oldest tokens (after BOS). Default: none. */
  maxLength?: number;
}

/**
 * One probe set per language: evaluation's prompts and items (`languagePrompts`: the same
 * demonstrations and `limit` subset for the same seed), tokenised as evaluation tokenises them,
 * with each class's answer-token set in the language and in English (`labelTokenIds`,
 * constrained decoding's prefix tokens).
 * @throws DataError for bad data (see loadTaskData); RangeError when no item is left after the
 *   demonstrations, or a label word has no token in the vocabulary.
 */
export async function buildProbeSets(tokenizer: Tokenizer, source: DataSource, task: TaskSpec, langs: readonly Lang[], opts: ProbeSetOptions = {}): Promise<ProbeSet[]> {
  const englishTokens = task.classes.map((w) => labelTokenIds(tokenizer, w));
  const sets: ProbeSet[] = [];
  for (const lang of langs) {
    const built = await languagePrompts(source, task, lang, opts);
    const answerTokens = built.labelWords.map((w) => labelTokenIds(tokenizer, w));
    const empty = [...answerTokens, ...englishTokens].findIndex((ids) => ids.length === 0);
    if (empty >= 0) {
      const word = empty < answerTokens.length ? built.labelWords[empty] : task.classes[empty - answerTokens.length];
      throw new RangeError(`${built.data.file}: no vocabulary token begins the label word "${word}"`);
    }
    const prompts = built.prompts.map((text) => {
      const ids = tokenizer.encode(text);
      return opts.maxLength === undefined ? ids : truncateLeft(ids, opts.maxLength, tokenizer.bosId).ids;
    });
    sets.push({ lang, prompts, indices: built.items.map((it) => it.index), labels: built.items.map((it) => it.label), answerTokens, englishTokens });
  }
  return sets;
}
