import { logSumExp } from "../tensor/logsumexp.ts";
import type { Rng } from "../tensor/random.ts";

/**
 * Turning next-token logits into a class: the two scoring rules of the evaluation, on host
 * arrays in float64 (a vocabulary row is 32k-152k numbers; summing probabilities of a few
 * hundred tokens in float32 would lose the small ones).
 */

/**
 * Prefix mode (the paper's constrained decoding): for each class, the next-token probability
 * mass of its label's token set, sum_{t in S_c} softmax(logits)_t.
 * @param logits one row of V logits, at offset `start`
 * @param sets per class, token ids in [0, V) (see labelTokenIds)
 * @returns per class a probability in [0, 1]
 */
export function prefixMasses(logits: ArrayLike<number>, start: number, V: number, sets: readonly (readonly number[])[]): number[] {
  const lse = logSumExp(logits, start, V);
  return sets.map((ids) => ids.reduce((s, id) => s + Math.exp(logits[start + id]! - lse), 0));
}

/**
 * The index of the largest score; exact ties among the largest are broken by `rng` (as the
 * authors' scripts break them at random) and reported.
 * @returns the chosen class and whether it was tied
 */
export function argmaxWithTies(scores: readonly number[], rng: Rng): { pred: number; tie: boolean } {
  const best = Math.max(...scores);
  const top = scores.flatMap((s, c) => (s === best ? [c] : []));
  return { pred: top.length > 1 ? top[rng.int(top.length)]! : top[0]!, tie: top.length > 1 };
}
