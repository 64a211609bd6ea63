/**
 * The Logit Lens (nostalgebraist, "interpreting GPT: the logit lens", LessWrong 2020; Zhang et
 * al. 2024, Section 5.1): read the residual stream after layer l as if it were the last one,
 *   p_l = softmax(W_U RMSNorm(h_l)),
 * with the model's own final norm and unembedding. At l = L this is the model's output; at
 * earlier layers it shows what the model "would say" so far. Question alignment is explained by
 * where the answer appears: with English-centred alignment the English answer word ("latent
 * English") gains mass in middle layers before the answer in the prompt's language does.
 *
 * This file holds the projection and the per-distribution statistics; probe.ts runs the model.
 */
import type { LlamaModel } from "../model/llama.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { logSumExp } from "../tensor/logsumexp.ts";

/**
 * Logit-lens logits: the model's final RMSNorm and unembedding (lm_head, or the tied
 * embedding) applied to residual-stream states.
 * @param h f32 [..., D]: residual stream (`forward(..., {outputHiddenStates: true}).hiddenStates[l]`)
 * @returns f32 [..., V] logits; softmax gives the lens distribution. For l = L they equal the
 *   model's logits.
 */
export function lensLogits(model: LlamaModel, h: Tensor): Tensor {
  return model.unembed(model.finalNorm(h));
}

/** One vocabulary entry of a lens distribution. */
export interface LensToken {
  id: number;
  /** The vocabulary entry ("▁the", "<0xE4>"), or `<id>` for ids past the tokenizer's vocabulary. */
  token: string;
  /** Its probability, in [0, 1]. */
  p: number;
}

/**
 * softmax(logits[start, start + V)) in float64, max-subtracted: the lens distribution of one
 * row (f32 logits from the device; in float64 the small probabilities survive the sums).
 */
export function softmaxRow(logits: ArrayLike<number>, start: number, V: number): Float64Array {
  const lse = logSumExp(logits, start, V);
  return Float64Array.from({ length: V }, (_, v) => Math.exp(logits[start + v]! - lse));
}

/** Shannon entropy -sum_v p_v ln p_v of a distribution, in nats (0 <= H <= ln V); 0 ln 0 = 0. */
export function entropyOf(p: ArrayLike<number>): number {
  let h = 0;
  for (let v = 0; v < p.length; v++) {
    const q = p[v]!;
    if (q > 0) h -= q * Math.log(q);
  }
  return h;
}

/**
 * The k most probable entries of p as [id, p] pairs, most probable first (ties: lower id
 * first). One pass keeping a sorted list of k: O(V) comparisons once the list is full.
 */
export function topK(p: ArrayLike<number>, k: number): [number, number][] {
  const best: [number, number][] = [];
  for (let v = 0; v < p.length && k > 0; v++) {
    const q = p[v]!;
    if (best.length === k && q <= best[k - 1]![1]) continue;
    let at = best.length;
    while (at > 0 && best[at - 1]![1] < q) at--;
    best.splice(at, 0, [v, q]);
    if (best.length > k) best.pop();
  }
  return best;
}

/** [id, p] pairs with their vocabulary entries. */
export function namedTokens(tokenizer: Pick<Tokenizer, "idToToken">, pairs: readonly [number, number][]): LensToken[] {
  return pairs.map(([id, p]) => ({ id, token: tokenizer.idToToken(id) ?? `<${id}>`, p }));
}
