import { noGrad } from "../tensor/autograd.ts";
import { tensor } from "../tensor/ops/create.ts";
import { Rng } from "../tensor/random.ts";
import { tidy } from "../tensor/scope.ts";
import type { LlamaModel } from "./llama.ts";

/**
 * Autoregressive decoding with a KV cache: the prompt is run once (prefill), then one token per
 * step, each attending to the cached keys and values.
 */
export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 (default) is greedy decoding (argmax). */
  temperature?: number;
  /** Nucleus sampling (Holtzman et al. 2020): sample from the smallest set of tokens whose probability reaches topP. */
  topP?: number;
  seed?: number;
  /** Stop after generating any of these ids (default: config eos_token_id). */
  eosTokenIds?: readonly number[];
  /** Called with each new token id as soon as it is chosen (streaming). */
  onToken?: (id: number) => void;
}

/**
 * Chooses the next token from logits [V] (f32 host array): argmax at temperature 0, else a
 * sample of softmax(logits / temperature) restricted to the top-p nucleus.
 */
export function sampleToken(logits: ArrayLike<number>, temperature: number, topP: number, rng: Rng): number {
  if (temperature <= 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!);
  const probs = Array.from(logits, (l, id) => ({ id, p: Math.exp((l - max) / temperature) }));
  const total = probs.reduce((s, x) => s + x.p, 0);
  probs.sort((a, b) => b.p - a.p);
  let kept = 0;
  let mass = 0;
  while (kept < probs.length && mass < topP * total) mass += probs[kept++]!.p;
  let r = rng.uniform() * mass;
  for (let i = 0; i < kept; i++) {
    r -= probs[i]!.p;
    if (r <= 0) return probs[i]!.id;
  }
  return probs[kept - 1]!.id;
}

/**
 * Generates up to maxNewTokens ids after `promptIds` (one sequence), stopping after an eos id.
 * @returns the new ids (without the prompt)
 * @throws RangeError when the prompt is empty or holds an id outside [0, vocab_size) (checked
 *   on the host, since the webgpu embedding reads such ids as zero rows), prompt + new tokens
 *   exceed max_position_embeddings, temperature < 0 or top-p outside (0, 1], and when a step's
 *   logits hold NaN or infinity (argmax and sampling would pick an arbitrary token).
 */
export async function generate(model: LlamaModel, promptIds: readonly number[], opts: GenerateOptions = {}): Promise<number[]> {
  const maxNew = opts.maxNewTokens ?? 32;
  if (promptIds.length === 0) throw new RangeError("generate: the prompt has no tokens");
  const V = model.config.vocab_size;
  const bad = promptIds.findIndex((id) => !(Number.isInteger(id) && id >= 0 && id < V));
  if (bad >= 0) {
    throw new RangeError(
      `generate: prompt id ${promptIds[bad]} at position ${bad} is outside the vocabulary [0, ${V}) (config.json vocab_size); ` +
        "was the prompt encoded by a tokenizer of another checkpoint?",
    );
  }
  const temperature = opts.temperature ?? 0;
  const topP = opts.topP ?? 1;
  if (!(temperature >= 0)) throw new RangeError(`generate: temperature must be >= 0, got ${temperature}`);
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`generate: top-p must be in (0, 1], got ${topP}`);
  const limit = model.config.max_position_embeddings;
  if (promptIds.length + maxNew > limit) {
    throw new RangeError(`generate: prompt (${promptIds.length}) + max new tokens (${maxNew}) exceed max_position_embeddings ${limit}`);
  }
  const eos = new Set(opts.eosTokenIds ?? model.config.eos_token_id);
  const rng = new Rng(opts.seed ?? 0);
  const cache = model.newCache(1);
  const out: number[] = [];
  try {
    let next: readonly number[] = promptIds;
    for (let step = 0; step < maxNew; step++) {
      const logits = noGrad(() =>
        tidy(() => {
          const ids = tensor(Int32Array.from(next), { device: model.device, shape: [1, next.length] });
          return model.forward(ids, { cache, logits: "last" }).logits!;
        }),
      );
      const row = await logits.data();
      logits.dispose();
      const nonFinite = row.findIndex((x) => !Number.isFinite(x));
      if (nonFinite >= 0) {
        throw new RangeError(
          `generate: the logits of new token ${step + 1} are not finite (logit ${nonFinite} is ${row[nonFinite]}); the checkpoint or adapter may hold NaN or infinite weights`,
        );
      }
      const id = sampleToken(row, temperature, topP, rng);
      out.push(id);
      opts.onToken?.(id);
      if (eos.has(id)) break;
      next = [id];
    }
  } finally {
    cache.dispose();
  }
  return out;
}
