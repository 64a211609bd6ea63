import type { KVCache, LlamaModel } from "../model/llama.ts";
import { leftPad } from "../model/padding.ts";
import { noGrad } from "../tensor/autograd.ts";
import { tensor } from "../tensor/ops/create.ts";
import { tidy } from "../tensor/scope.ts";

/**
 * Batched forward passes for scoring: many prompts that share a k-shot prefix.
 *
 * The prefix is run once (batch 1) into a KV cache; each batch copies that cache to its rows
 * (`KVCache.expand`) and runs only the rows' own tokens. Rows differ in length, so each row is
 * padded on the left of its own tokens, i.e. between the cached prefix and the row
 * (src/model/padding.ts).
 *
 * Positions come from the mask (cumsum - 1, src/model/rope.ts), so a row's tokens get the
 * positions they would have right after the prefix, and the padding is never attended; the
 * logits therefore equal those of the unpadded full prompt (checked in test/eval_cache.test.ts).
 * Without a cache, rows are left-padded full prompts (HF's padding_side = "left"). One caveat:
 * a sliding attention window (Mistral) counts key slots, padding included, as HF's mask does,
 * so padded rows longer than the window (4096 tokens for Mistral-7B) see slightly less context.
 */

/** Length of the longest common prefix of two id sequences. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

/**
 * Fits `ids` into `maxLength` tokens by dropping tokens from the left (the oldest
 * demonstrations go first), keeping a leading BOS so that the model still sees a start token.
 * @returns the ids and how many were dropped (0 when they fit)
 */
export function truncateLeft(ids: readonly number[], maxLength: number, bosId: number | null): { ids: number[]; dropped: number } {
  const dropped = Math.max(0, ids.length - maxLength);
  if (dropped === 0) return { ids: ids.slice(), dropped };
  const keepBos = bosId !== null && ids[0] === bosId && maxLength > 1;
  return { ids: keepBos ? [ids[0]!, ...ids.slice(1 + dropped)] : ids.slice(dropped), dropped };
}

/** The KV cache of a shared prefix (batch 1), built once and copied per batch. */
export class PrefixCache {
  private constructor(
    /** The prefix's token ids [P]. */
    readonly ids: readonly number[],
    private readonly cache: KVCache,
  ) {}

  /**
   * Runs `ids` through `model` once (no logits) and keeps the keys and values of every layer:
   * [1, Hkv, P, Dh] each.
   * @throws RangeError when `ids` is empty.
   */
  static build(model: LlamaModel, ids: readonly number[]): PrefixCache {
    if (ids.length === 0) throw new RangeError("PrefixCache.build: the prefix has no tokens");
    const cache = model.newCache(1);
    noGrad(() =>
      tidy(() => {
        model.forward(tensor(Int32Array.from(ids), { device: model.device, shape: [1, ids.length] }), { cache, logits: "none" });
      }),
    );
    return new PrefixCache(ids, cache);
  }

  /** A copy for `batch` rows, to be disposed by the caller. */
  expand(batch: number): KVCache {
    return this.cache.expand(batch);
  }

  dispose(): void {
    this.cache.dispose();
  }
}

/**
 * Logits at the last `W` positions of each row: with W = 1 the next-token distribution after
 * the row (prefix mode), with W = 1 + n the positions that predict the row's last n tokens
 * (log-likelihood mode). Rows are right-aligned, so window index w of every row is position
 * T - W + w of that row's padded sequence.
 * @param rows token ids per row, each at least W long (after the prefix, when `prefix` is given);
 *   with a prefix, each row holds only the tokens after the prefix's P ids
 * @param W window width, >= 1
 * @returns f32 logits [B, W, V], V = model.config.vocab_size, on the host
 * @throws RangeError when a row is shorter than W.
 */
export async function windowLogits(model: LlamaModel, rows: readonly (readonly number[])[], W: number, prefix: PrefixCache | null): Promise<Float32Array> {
  const B = rows.length;
  const short = rows.findIndex((r) => r.length < W);
  if (short >= 0) throw new RangeError(`windowLogits: row ${short} has ${rows[short]!.length} tokens, fewer than the window ${W}`);
  const { ids, mask, T } = leftPad(rows, prefix?.ids.length ?? 0);
  const cache = prefix?.expand(B);
  try {
    const logits = noGrad(() =>
      tidy(() => {
        const input = tensor(ids, { device: model.device, shape: [B, T] });
        const opts = { attentionMask: mask, ...(cache ? { cache } : {}) };
        if (W === 1) return model.forward(input, { ...opts, logits: "last" }).logits!;
        // Only the window is unembedded: [B, W, D] -> [B, W, V], not [B, T, V].
        const hidden = model.forward(input, { ...opts, logits: "none", outputHiddenStates: true }).hiddenStates!;
        return model.unembed(model.finalNorm(hidden[hidden.length - 1]!.slice(1, T - W, T)));
      }),
    );
    const data = (await logits.data()) as Float32Array;
    logits.dispose();
    return data;
  } finally {
    cache?.dispose();
  }
}
