/**
 * Probe sets from the evaluation data: the same k-shot prompts, items and label-token sets as
 * `qalign eval` (src/eval), so that the lens reads the distribution that evaluation scores.
 */
import { truncateLeft } from "../eval/batch.ts";
import type { Lang } from "../eval/languages.ts";
import { buildPrompts, classTokenIds, promptIds, type ProtocolOptions } from "../eval/protocol.ts";
import type { DataSource } from "../eval/source.ts";
import type { TaskSpec } from "../eval/tasks.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { ProbeSet } from "./probe.ts";

/** Evaluation's prompt options (protocol, labels, shots, seed, limit, onInvalid), and a length cap. */
export interface ProbeSetOptions extends ProtocolOptions {
  /** Longest prompt in tokens; longer ones lose their oldest tokens (after BOS). Default: none. */
  maxLength?: number;
}

/**
 * One probe set per language: evaluation's prompts and items (`buildPrompts`: the same
 * protocol, demonstrations and `limit` subset for the same seed), tokenised as evaluation
 * tokenises them, with each class's answer-token set in the prompts' words and in English under
 * the protocol's token rule (`classTokenIds`, constrained decoding's prefix tokens).
 * @throws DataError for bad data (see loadTaskData); RangeError when no item is left after the
 *   demonstrations, or a label word has no token in the vocabulary.
 */
export async function buildProbeSets(tokenizer: Tokenizer, source: DataSource, task: TaskSpec, langs: readonly Lang[], opts: ProbeSetOptions = {}): Promise<ProbeSet[]> {
  const sets: ProbeSet[] = [];
  for (const lang of langs) {
    const built = await buildPrompts(source, task, lang, opts);
    const answerTokens = classTokenIds(tokenizer, built);
    const englishTokens = classTokenIds(tokenizer, { scoredWords: [...task.classes], tokenRule: built.tokenRule });
    const empty = [...answerTokens, ...englishTokens].findIndex((ids) => ids.length === 0);
    if (empty >= 0) {
      const word = empty < answerTokens.length ? built.scoredWords[empty] : task.classes[empty - answerTokens.length];
      throw new RangeError(`${built.data.file}: no vocabulary token begins the label word "${word}"`);
    }
    const prompts = built.prompts.map((text) => {
      const ids = promptIds(tokenizer, built, text);
      return opts.maxLength === undefined ? ids : truncateLeft(ids, opts.maxLength, tokenizer.bosId).ids;
    });
    sets.push({ lang, prompts, indices: built.items.map((it) => it.index), labels: built.items.map((it) => it.label), answerTokens, englishTokens });
  }
  return sets;
}
