import type { DataIssue } from "../io/data_error.ts";
import type { LlamaModel } from "../model/llama.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { Rng } from "../tensor/random.ts";
import { commonPrefix, PrefixCache, truncateLeft, windowLogits } from "./batch.ts";
import { authorsChoice, authorsCorrect } from "./authors_scoring.ts";
import type { Item } from "./data.ts";
import { logSumExp } from "../tensor/logsumexp.ts";
import { argmaxWithTies, prefixMasses } from "./decode.ts";
import { shadowedClasses, type Vocabulary } from "./label_tokens.ts";
import type { Lang } from "./languages.ts";
import { accuracyOf, confusionMatrix, type Accuracy } from "./metrics.ts";
import type { LabelLanguage } from "./paper.ts";
import { buildPrompts, classTokenIds, promptIds, type Protocol, type ProtocolOptions, type ProtocolPrompts } from "./protocol.ts";
import { PythonRandom } from "./python_random.ts";
import type { DataSource } from "./source.ts";
import type { TaskId, TaskSpec } from "./tasks.ts";

/**
 * Evaluation of one task in one language as Zhang et al. (2024) evaluate it: k-shot prompts in
 * the item's language, scored by constrained decoding over the label words, accuracy Acc_l.
 */

/**
 * "prefix": the paper's constrained decoding, next-token probability mass of each label's
 * prefix tokens (see label_tokens.ts). "loglik": the log-likelihood of each whole label word
 * (sum of its tokens' log-probabilities given the prompt), for labels of several tokens.
 */
export type ScoreMode = "prefix" | "loglik";

/**
 * Which rule judges an item correct. "index": the predicted class equals the item's class, read
 * from the English file by index (ties broken uniformly at random, seeded). "authors": the
 * authors' scripts bug for bug (authors_scoring.ts): their tie-breaking and their check of the
 * chosen answer word against the item's answer through their tables.
 */
export type Scoring = "index" | "authors";

/** Prompt choice (protocol, labels, shots, seed, limit, onInvalid) plus how to score. */
export interface EvalOptions extends ProtocolOptions {
  /** Default "prefix"; the paper protocol scores prefix only (the authors' token sets). */
  mode?: ScoreMode;
  /** Which rule's accuracy is reported; default "index". Both are computed where the authors have a script for the words. */
  scoring?: Scoring;
  /** Items per forward pass (x classes in loglik mode); default 8. */
  batchSize?: number;
  /** Reuse the KV cache of the shared demonstrations; default true. */
  prefixCache?: boolean;
  /** Longest prompt in tokens; longer ones lose tokens on the left. Default max_position_embeddings. */
  maxLength?: number;
  /** Called with (0, total) when scoring starts, then after each batch with items done and total. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Called with each label-set warning (a label word prefix scoring cannot predict) before the
   * language is scored; the warnings are also in the result.
   */
  onWarning?: (lang: Lang, warning: string) => void;
}

/** The outcome for one item. */
export interface ItemResult {
  index: number;
  /** True class (index into the task's classes). */
  label: number;
  pred: number;
  /** Per class: probability mass (prefix mode) or log-likelihood in nats (loglik mode). */
  scores: number[];
  tie: boolean;
  /** The authors' choice from the same scores and whether their check counts it correct; null where they have no script for these words. */
  authors: { pred: number; tie: boolean; correct: boolean } | null;
}

/** A prompt shortened to the model's context: the item's index and the tokens dropped on the left. */
export interface Truncation {
  index: number;
  dropped: number;
}

/** The evaluation of one task in one language: Acc_l with its counts, and all that led to it. */
export interface LanguageResult extends Accuracy {
  task: TaskId;
  lang: Lang;
  file: string;
  protocol: Protocol;
  /** The answer words' language in the prompts. */
  labels: LabelLanguage;
  /** Which token-set rule scored the classes. */
  tokenRule: ProtocolPrompts["tokenRule"];
  /** Which rule's judgement the accuracy, confusion matrix and ties report. */
  scoring: Scoring;
  /**
   * Correct items under each rule and how many items the two judge differently (null where the
   * authors have no script for these words).
   */
  judged: { index: number; authors: number | null; differ: number | null };
  mode: ScoreMode;
  shots: number;
  /** The English class names, in class order. */
  classes: string[];
  /** The answer words the prompts use, in class order. */
  labelWords: string[];
  /** Text whose tokens follow every prompt (the authors' Thai rule), or "". */
  continuation: string;
  /** Prefix mode: how many vocabulary tokens begin each label word. */
  labelTokenCounts: number[];
  /** Prefix mode: label words whose token set another one's contains (see shadowedClasses). */
  warnings: string[];
  /** Test-file indices of the demonstrations (never scored; empty when they come from the authors' scripts). */
  demos: number[];
  /** Items whose best score was tied (broken at random, seeded). */
  ties: number;
  /** confusion[true][pred]. */
  confusion: number[][];
  truncated: Truncation[];
  skipped: DataIssue[];
  /** Tokens of the shared prefix computed once (0 without the cache). */
  prefixTokens: number;
  /** Wall-clock seconds: loading, tokenization, the prefix and every batch. */
  seconds: number;
  /** n / seconds. */
  itemsPerSecond: number;
  /** Every scored item, in file order. */
  items: ItemResult[];
}

/** What an evaluation runs on. */
export interface EvalContext {
  model: LlamaModel;
  tokenizer: Tokenizer;
  source: DataSource;
  task: TaskSpec;
  options?: EvalOptions;
  /**
   * Each language's prompts, built by checkLanguages with these same options; a language not in
   * the map has its prompts built from `source` when it is evaluated.
   */
  prompts?: ReadonlyMap<Lang, ProtocolPrompts>;
}

/** A sequence to run: its ids, and how many trailing ids are scored (0: the next token is). */
export interface Row {
  ids: number[];
  scored: number;
}

/**
 * Loads and checks the data of every language in `langs` (test files, the parallel English
 * file, field words, demonstrations and the `limit` subset) and the options before any
 * language is evaluated, so that a bad file fails in seconds instead of after the languages
 * before it have been evaluated.
 * @returns each language's prompts, for EvalContext.prompts (so no file is read twice)
 * @throws DataError / RangeError as {@link buildPrompts} does, for the first bad language;
 *   RangeError for loglik under the paper protocol, or authors' scoring of words they never scripted.
 */
export async function checkLanguages(source: DataSource, task: TaskSpec, langs: readonly Lang[], opts: EvalOptions = {}): Promise<Map<Lang, ProtocolPrompts>> {
  const prompts = new Map<Lang, ProtocolPrompts>();
  for (const lang of langs) prompts.set(lang, checkOptions(await buildPrompts(source, task, lang, opts), opts));
  return prompts;
}

/**
 * The prompts, once the options fit them. @throws RangeError for loglik under the paper protocol
 * (its scoring is the authors' token sets) or `scoring: "authors"` where they have no script.
 */
function checkOptions(prompts: ProtocolPrompts, opts: EvalOptions): ProtocolPrompts {
  if (prompts.protocol === "paper" && (opts.mode ?? "prefix") !== "prefix") {
    throw new RangeError("the paper protocol scores by the authors' token sets (prefix mode); loglik needs --protocol qalign");
  }
  if (opts.scoring === "authors" && prompts.authors === null) {
    throw new RangeError(`the authors' scripts never score ${prompts.data.task.title} with ${prompts.labels} answer words, so --scoring authors has no rule for them; use --labels english`);
  }
  return prompts;
}

/**
 * Evaluates `ctx.task` in `lang`: {@link prepareRows} tokenizes the prompts, truncates the long
 * ones and finds the shared prefix, {@link checkLabelSets} checks the label words against the
 * vocabulary, and {@link scoreBatches} runs the model and assigns each item its best-scoring
 * class. Label-set warnings go to `options.onWarning` (and into the result).
 * @returns counts, accuracy with a Wilson 95% interval, confusion matrix, ties, truncations and
 *   every item's scores
 * @throws DataError for bad data (see loadTaskData); RangeError when nothing is left to score,
 *   maxLength cannot hold a label, a label word has no vocabulary token (prefix mode), the
 *   tokenizer's ids exceed the model's vocabulary, or an item's scores are NaN or infinite
 *   (naming the file, the item and the language).
 */
export async function evaluateLanguage(ctx: EvalContext, lang: Lang): Promise<LanguageResult> {
  const started = performance.now();
  const { model, tokenizer, source, task } = ctx;
  const opts = ctx.options ?? {};
  const mode = opts.mode ?? "prefix";
  const prompts = ctx.prompts?.get(lang) ?? checkOptions(await buildPrompts(source, task, lang, opts), opts);
  const prepared = prepareRows(tokenizer, prompts, {
    mode,
    maxLength: opts.maxLength ?? model.config.max_position_embeddings,
    prefixCache: opts.prefixCache ?? true,
  });
  const { sets, warnings } = checkLabelSets(tokenizer, prompts, model.config.vocab_size, mode);
  for (const w of warnings) opts.onWarning?.(lang, w);
  const results = judgeByAuthors(prompts, await scoreBatches(model, prepared, sets, { mode, batchSize: Math.max(1, opts.batchSize ?? 8), seed: opts.seed ?? 0, onProgress: opts.onProgress }));
  const nonFinite = results.find((r) => !r.scores.every(Number.isFinite));
  if (nonFinite) {
    throw new RangeError(
      `${prompts.data.file}: item ${nonFinite.index} (${lang}): the class scores are not finite ([${nonFinite.scores.join(", ")}]); the checkpoint or adapter may hold NaN or infinite weights`,
    );
  }

  const scoring = opts.scoring ?? "index";
  const truth = results.map((r) => r.label);
  // Under the authors' rule an item counts correct when their check says so, which need not
  // be pred === label: accuracy counts their verdicts, the confusion matrix their choices.
  const chosen = results.map((r) => (scoring === "authors" ? r.authors!.pred : r.pred));
  const correct = results.map((r) => (scoring === "authors" ? r.authors!.correct : r.pred === r.label));
  const authorsCorrectCount = prompts.authors ? results.filter((r) => r.authors!.correct).length : null;
  const seconds = (performance.now() - started) / 1000;
  return {
    task: task.id,
    lang,
    file: prompts.data.file,
    protocol: prompts.protocol,
    labels: prompts.labels,
    tokenRule: prompts.tokenRule,
    scoring,
    judged: {
      index: results.filter((r) => r.pred === r.label).length,
      authors: authorsCorrectCount,
      differ: prompts.authors ? results.filter((r) => r.authors!.correct !== (r.pred === r.label)).length : null,
    },
    mode,
    shots: prompts.shots,
    classes: [...task.classes],
    labelWords: prompts.labelWords,
    continuation: prompts.continuation,
    labelTokenCounts: sets.map((s) => s.length),
    warnings,
    demos: prompts.demos,
    ...accuracyOf(correct),
    ties: results.filter((r) => (scoring === "authors" ? r.authors!.tie : r.tie)).length,
    confusion: confusionMatrix(truth, chosen, task.classes.length),
    truncated: prepared.truncated,
    skipped: prompts.data.skipped,
    prefixTokens: prepared.prefixIds.length,
    seconds,
    itemsPerSecond: results.length / seconds,
    items: results,
  };
}

/** One language's token rows, ready to score (see {@link prepareRows}). */
export interface PreparedRows {
  /** The scored items, in file order. */
  items: Item[];
  /** Per scored item: one row (prefix mode) or one per class (loglik mode). */
  rows: Row[][];
  /** Items whose prompt lost tokens on the left (they run without the cache). */
  truncated: Truncation[];
  /** Positions in `items` of the truncated ones. */
  cut: Set<number>;
  /** The shared prefix every uncut row starts with, [P] ids (empty: no cache). */
  prefixIds: number[];
}

/**
 * Tokenizes each prompt whole, as one string, as the paper's scripts do (followed by the
 * tokens of the prompts' `continuation`, the authors' Thai rule; in loglik mode also
 * prompt + each label word, scoring the tokens the label adds). Rows longer than `maxLength`
 * lose their oldest tokens (BOS kept). The shared prefix is the longest run of the
 * demonstrations' tokens that every uncut row starts with, leaving each row its scored tokens
 * and one more (whose logits predict the first of them): splitting it off into a KV cache
 * changes no token.
 * @throws RangeError when a label word adds no token to its prompt (loglik), or maxLength cannot
 *   hold a label and its context.
 */
export function prepareRows(
  tokenizer: Pick<Tokenizer, "encode" | "bosId">,
  prompts: Pick<ProtocolPrompts, "prompts" | "labelWords" | "items" | "prefix" | "continuation"> & { data: { file: string } },
  opts: { mode: ScoreMode; maxLength: number; prefixCache: boolean },
): PreparedRows {
  const { mode, maxLength } = opts;
  const rows: Row[][] = prompts.prompts.map((p) => {
    const ids = promptIds(tokenizer, prompts, p);
    if (mode === "prefix") return [{ ids, scored: 0 }];
    return prompts.labelWords.map((w) => {
      const full = tokenizer.encode(p + w);
      // Where the label's tokens start: usually ids.length, earlier if the label merged
      // with the prompt's last token.
      const start = commonPrefix(ids, full);
      if (start === full.length) throw new RangeError(`loglik: label "${w}" adds no token to the prompt`);
      return { ids: full, scored: full.length - start };
    });
  });

  // Prompts longer than the context lose their oldest tokens and run without the cache.
  const truncated: Truncation[] = [];
  const cut = new Set<number>(); // positions in `items`
  rows.forEach((itemRows, i) => {
    let worst = 0;
    for (const row of itemRows) {
      if (row.ids.length <= maxLength) continue;
      const t = truncateLeft(row.ids, maxLength, tokenizer.bosId);
      if (t.ids.length < row.scored + 1) throw new RangeError(`${prompts.data.file}: maxLength ${maxLength} cannot hold a label of ${row.scored} tokens and its context`);
      row.ids = t.ids;
      worst = Math.max(worst, t.dropped);
    }
    if (worst > 0) {
      truncated.push({ index: prompts.items[i]!.index, dropped: worst });
      cut.add(i);
    }
  });

  const prefixIds = tokenizer.encode(prompts.prefix);
  const useCache = opts.prefixCache && prompts.prefix !== "" && cut.size < rows.length;
  let P = useCache ? prefixIds.length : 0;
  rows.forEach((itemRows, i) => {
    if (!cut.has(i)) for (const r of itemRows) P = Math.min(P, commonPrefix(prefixIds, r.ids), r.ids.length - r.scored - 1);
  });
  return { items: prompts.items, rows, truncated, cut, prefixIds: prefixIds.slice(0, P) };
}

/**
 * Each class's vocabulary tokens under the prompts' token rule (authors_tokens.ts for the paper
 * protocol, label_tokens.ts for qalign's), checked against the model.
 * @param V the model's vocab_size
 * @returns the token set of each class, and a warning for each label word that prefix scoring
 *   cannot predict (its tokens all begin another label word too: see shadowedClasses)
 * @throws RangeError when a token id is outside the model's vocabulary, or (prefix mode) a label
 *   word has no token.
 */
export function checkLabelSets(
  vocab: Vocabulary & Pick<Tokenizer, "encode">,
  prompts: Pick<ProtocolPrompts, "scoredWords" | "tokenRule">,
  V: number,
  mode: ScoreMode,
): { sets: number[][]; warnings: string[] } {
  const labelWords = prompts.scoredWords;
  const sets = classTokenIds(vocab, prompts);
  const outside = sets.flat().find((id) => id >= V);
  if (outside !== undefined) throw new RangeError(`label token id ${outside} is outside the model's vocabulary (${V}): tokenizer and model disagree`);
  const empty = sets.findIndex((ids) => ids.length === 0);
  if (mode === "prefix" && empty >= 0) throw new RangeError(`no vocabulary token begins the label word "${labelWords[empty]}": use --mode loglik`);
  const warnings =
    mode === "prefix"
      ? shadowedClasses(sets).map(
          ([a, b]) => `label word "${labelWords[a]}" begins only with tokens that also begin "${labelWords[b]}": prefix scoring cannot predict it (use --mode loglik)`,
        )
      : [];
  return { sets, warnings };
}

/**
 * Runs the prepared rows through the model in batches of `batchSize` items (the uncut ones after
 * the shared prefix's KV cache, the cut ones whole) and scores each class: the probability mass
 * of its label's prefix tokens in the next-token distribution (prefix mode), or the label word's
 * log-likelihood (loglik mode). Each item gets the best class, ties broken at random by a
 * generator of its own (seed + 1), so that tie-breaks move neither the demonstrations nor the
 * subset.
 * @param sets each class's label token ids, from {@link checkLabelSets}
 * @returns one result per item, in the order of `prepared.items`
 */
export async function scoreBatches(
  model: LlamaModel,
  prepared: PreparedRows,
  sets: readonly number[][],
  opts: { mode: ScoreMode; batchSize: number; seed: number; onProgress?: (done: number, total: number) => void },
): Promise<ItemResult[]> {
  const { items, rows, cut, prefixIds } = prepared;
  const V = model.config.vocab_size;
  const P = prefixIds.length;
  const tieRng = new Rng(opts.seed + 1);
  const results: ItemResult[] = new Array(items.length);
  const prefix = P > 0 ? PrefixCache.build(model, prefixIds) : null;
  try {
    const positions = [...items.keys()];
    const groups: [number[], PrefixCache | null][] = [
      [positions.filter((i) => prefix !== null && !cut.has(i)), prefix],
      [positions.filter((i) => prefix === null || cut.has(i)), null],
    ];
    let done = 0;
    opts.onProgress?.(0, items.length);
    for (const [group, cache] of groups) {
      for (let s = 0; s < group.length; s += opts.batchSize) {
        const batch = group.slice(s, s + opts.batchSize);
        const batchRows = batch.flatMap((i) => rows[i]!);
        const W = 1 + Math.max(...batchRows.map((r) => r.scored));
        const logits = await windowLogits(model, batchRows.map((r) => (cache ? r.ids.slice(P) : r.ids)), W, cache);
        let b = 0; // row within the batch
        for (const i of batch) {
          const scores = opts.mode === "prefix" ? prefixMasses(logits, (b++ * W + W - 1) * V, V, sets) : rows[i]!.map((row) => labelLogLik(logits, b++, W, V, row));
          const { pred, tie } = argmaxWithTies(scores, tieRng);
          results[i] = { index: items[i]!.index, label: items[i]!.label, pred, scores, tie, authors: null };
        }
        done += batch.length;
        opts.onProgress?.(done, items.length);
      }
    }
  } finally {
    prefix?.dispose();
  }
  return results;
}

/**
 * Adds the authors' judgement to each result: their choice from the same scores, with one
 * CPython `random.seed(0)` stream per language drawn at each tie in file order (as each script
 * runs one language from a fresh seed), and their correctness check of that choice against the
 * item's answer in its language (the class's answer word in the language's file).
 * @param results in file order
 */
function judgeByAuthors(prompts: ProtocolPrompts, results: ItemResult[]): ItemResult[] {
  const rule = prompts.authors;
  if (!rule) return results;
  const rng = new PythonRandom(0);
  return results.map((r) => {
    const { pred, tie } = authorsChoice(rule, r.scores, rng);
    return { ...r, authors: { pred, tie, correct: authorsCorrect(rule, pred, prompts.data.labelWords[r.label]!) } };
  });
}

/**
 * Log-likelihood of a row's last `row.scored` tokens: sum_j log softmax(logits[w_j])[t_j], where
 * window index w_j = W - n + j - 1 predicts token j of the n scored ones.
 * @param logits [B, W, V]; `b` is the row's index in the batch
 */
function labelLogLik(logits: Float32Array, b: number, W: number, V: number, row: Row): number {
  const n = row.scored;
  let sum = 0;
  for (let j = 0; j < n; j++) {
    const start = (b * W + W - n + j - 1) * V;
    sum += logits[start + row.ids[row.ids.length - n + j]!]! - logSumExp(logits, start, V);
  }
  return sum;
}
