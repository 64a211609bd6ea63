import type { Tokenizer } from "../model/tokenizer.ts";
import { Rng } from "../tensor/random.ts";
import { DataError, noUsableItems, type DataIssue } from "../io/data_error.ts";
import { hostFiles, type Files } from "../io/files.ts";
import { parseJson } from "../io/json.ts";
import type { Example } from "./loss.ts";

/**
 * Question-translation data (the `*_train_question.json` files of Zhang et al. 2024): JSON arrays
 * of {input, answer}, where `input` is a question in the source language followed by the line
 * "Translate the input from <Language> to English:" and a newline, and `answer` is the English
 * question. Reading validates every item; mixing, capping, shuffling and the validation split
 * are seeded; tokenisation truncates long pairs and counts them.
 */

/** One usable item and where it came from. */
export interface QuestionPair {
  input: string;
  answer: string;
  file: string;
  /** 0-based position in the file's array. */
  index: number;
}

/** What is wrong with one field value, or null when it is a non-empty string. */
function fieldProblem(v: unknown): string | null {
  if (v === undefined) return "missing";
  if (typeof v !== "string") return `not a string (${v === null ? "null" : Array.isArray(v) ? "array" : typeof v})`;
  return v.trim() === "" ? "empty" : null;
}

/**
 * Reads question-pair files and concatenates their usable items, in file order (the paper's
 * mixtures, e.g. zh + es, are such concatenations). An item is usable when it is an object whose
 * `input` and `answer` are non-empty strings; other fields are ignored.
 * @param opts.strict throw on the first malformed item instead of skipping it
 * @param opts.files where the files are (default: the host's, io/files.ts)
 * @returns the usable pairs and one issue per skipped item
 * @throws DataError naming the file for an unreadable file, invalid JSON or a non-array; with
 *   strict, naming file, index and field for a malformed item; naming the file when a file holds
 *   no usable item (an empty array, or only malformed items).
 */
export async function readQuestionPairs(
  files: readonly string[],
  opts: { strict?: boolean; files?: Files } = {},
): Promise<{ pairs: QuestionPair[]; issues: DataIssue[] }> {
  const host = opts.files ?? (await hostFiles());
  const pairs: QuestionPair[] = [];
  const issues: DataIssue[] = [];
  for (const file of files) {
    const before = pairs.length;
    let items: unknown;
    try {
      items = parseJson(await host.readText(file));
    } catch (e) {
      throw new DataError(file, `cannot read as JSON: ${(e as Error).message}`);
    }
    if (!Array.isArray(items)) throw new DataError(file, "must hold a JSON array of {input, answer} items");
    items.forEach((item: unknown, index) => {
      const isObject = typeof item === "object" && item !== null && !Array.isArray(item);
      const fields = isObject ? (item as Record<string, unknown>) : {};
      const found: DataIssue[] = isObject
        ? (["input", "answer"] as const).flatMap((field) => {
            const problem = fieldProblem(fields[field]);
            return problem ? [{ file, index, field, problem }] : [];
          })
        : [{ file, index, field: "item", problem: "not an object" }];
      if (found.length === 0) pairs.push({ input: fields.input as string, answer: fields.answer as string, file, index });
      else if (opts.strict) throw new DataError(file, found[0]!.problem, index, found[0]!.field);
      else issues.push(...found);
    });
    // Each file must contribute: an empty one in a mixture would silently drop its language.
    if (pairs.length === before) throw noUsableItems(file, items.length, issues.filter((i) => i.file === file));
  }
  return { pairs, issues };
}

/** How to cut a pool of pairs into training and validation sets. */
export interface SplitOptions {
  /** Keep at most this many pairs in all (after shuffling); default: all. */
  maxSamples?: number;
  /** Fraction of the kept pairs held out for validation, in [0, 1) (default 0.05, as the paper). */
  valSize?: number;
  seed?: number;
}

/**
 * Shuffles the pool with a seeded Fisher-Yates shuffle, keeps the first `maxSamples`, and holds
 * out ceil(valSize * kept) of them for validation (HF `train_test_split` rounds the test share up
 * the same way), leaving at least one for training. Capping after the shuffle keeps a mixture's
 * languages in proportion; LLaMA-Factory instead caps each file to its first items.
 * @throws RangeError for valSize outside [0, 1) or maxSamples < 1.
 */
export function splitPairs<T>(pool: readonly T[], opts: SplitOptions = {}): { train: T[]; val: T[] } {
  const valSize = opts.valSize ?? 0.05;
  if (!(valSize >= 0 && valSize < 1)) throw new RangeError(`valSize must be in [0, 1), got ${valSize}`);
  if (opts.maxSamples !== undefined && !(opts.maxSamples >= 1)) throw new RangeError(`maxSamples must be at least 1, got ${opts.maxSamples}`);
  const kept = new Rng(opts.seed ?? 0).shuffle(pool.slice()).slice(0, opts.maxSamples ?? pool.length);
  const nVal = Math.min(Math.ceil(valSize * kept.length), kept.length - 1);
  return { val: kept.slice(0, nVal), train: kept.slice(nVal) };
}

/**
 * Lengths after truncating a (source, target) pair to `maxLength` tokens, by LLaMA-Factory's
 * `infer_seqlen` (src/llamafactory/data/processors/processor_utils.py): a short target is kept
 * whole and the source cut; a short source is kept and the target cut; otherwise both are cut in
 * proportion to their lengths. Sources and targets are cut at their ends.
 */
export function truncatedLengths(sourceLen: number, targetLen: number, maxLength: number): { source: number; target: number } {
  let maxTarget: number;
  if (targetLen * 2 < maxLength) maxTarget = maxLength;
  else if (sourceLen * 2 < maxLength) maxTarget = maxLength - sourceLen;
  else maxTarget = Math.floor((maxLength * targetLen) / (sourceLen + targetLen));
  const target = Math.min(maxTarget, targetLen);
  const source = Math.min(Math.max(maxLength - target, 0), sourceLen);
  return { source, target };
}

/**
 * Tokenises pairs as the paper's training code does: the prompt is `input` with the tokenizer's
 * special tokens (e.g. `<s>` for Llama/Mistral), the target is `answer` without them, followed
 * by `eosId`. Pairs longer than `maxLength` tokens are truncated ({@link truncatedLengths}).
 * @returns one Example per pair (same order) and how many were truncated
 * @throws RangeError when maxLength < 2 (a prompt token and a target token).
 */
export function encodePairs(
  pairs: readonly Pick<QuestionPair, "input" | "answer">[],
  tokenizer: Tokenizer,
  opts: { eosId: number; maxLength: number },
): { examples: Example[]; truncated: number } {
  if (!(opts.maxLength >= 2)) throw new RangeError(`maxLength must be at least 2, got ${opts.maxLength}`);
  let truncated = 0;
  const examples = pairs.map(({ input, answer }) => {
    const source = tokenizer.encode(input, { addSpecialTokens: true });
    const target = [...tokenizer.encode(answer, { addSpecialTokens: false }), opts.eosId];
    if (source.length + target.length <= opts.maxLength) return { ids: [...source, ...target], promptLen: source.length };
    truncated++;
    // A prompt needs one token (the first token is never predicted), a target one.
    const len = truncatedLengths(source.length, target.length, opts.maxLength);
    const s = Math.max(1, Math.min(len.source, opts.maxLength - 1));
    const t = Math.max(1, Math.min(len.target, opts.maxLength - s));
    return { ids: [...source.slice(0, s), ...target.slice(0, t)], promptLen: s };
  });
  return { examples, truncated };
}
