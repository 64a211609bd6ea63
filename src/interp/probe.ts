/**
 * One pass of a model over the probe prompts, reading the residual stream at the last prompt
 * position (where the model predicts the answer's first token) after every layer. From it:
 * the Logit Lens per item and layer (lens.ts), the mean state per language and layer (for the
 * correlation with English, correlation.ts), and the states of chosen layers (for PCA, pca.ts).
 *
 * Prompts run in batches, left-padded to the longest (HF's padding_side = "left": positions
 * come from the attention mask, padding is never attended), so the last position of every row
 * is its own last token. Batches take prompts in length order to pad little.
 */
import { prefixMasses } from "../eval/decode.ts";
import type { LlamaModel } from "../model/llama.ts";
import { leftPad } from "../model/padding.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { noGrad } from "../tensor/autograd.ts";
import { tensor } from "../tensor/ops/create.ts";
import { concat } from "../tensor/ops/views.ts";
import { tidy } from "../tensor/scope.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { entropyOf, lensLogits, namedTokens, softmaxRow, topK, type LensToken } from "./lens.ts";

/** One language's prompts and answers, as the probes read them (built by sets.ts). */
export interface ProbeSet {
  /** Language code ("en", "zh", ...). */
  lang: string;
  /** Token ids of each prompt (special tokens included); the next token would begin the answer. */
  prompts: readonly (readonly number[])[];
  /** Each item's index in its data file (the same item in every language). */
  indices: readonly number[];
  /** Each item's true class. */
  labels: readonly number[];
  /** Per class: ids of the tokens that begin its answer word in this language (constrained decoding's sets). */
  answerTokens: readonly (readonly number[])[];
  /** Per class: ids of the tokens that begin its English answer word ("latent English"). */
  englishTokens: readonly (readonly number[])[];
}

/** What {@link probe} computes, and how it batches. */
export interface ProbeOptions {
  /** Compute the Logit Lens (default true). */
  lens?: boolean;
  /** Tokens to list per item and layer, and per language and layer (default 5). */
  topK?: number;
  /** Layers (0..L) whose last-token states are kept, e.g. for PCA (default none). */
  keepLayers?: readonly number[];
  /** Prompts per forward pass (default 8). */
  batchSize?: number;
  /** Called with (lang, 0, total) when a language starts, then after each batch with items done and total. */
  onProgress?: (lang: string, done: number, total: number) => void;
}

/** The lens of one item: per layer l = 0..L (arrays of length L + 1). */
export interface LensItem {
  index: number;
  label: number;
  /** Mass of the answer word's first tokens in the prompt's language, [0, 1]. */
  answerMass: number[];
  /** Mass of the English answer word's first tokens, [0, 1]. */
  englishMass: number[];
  /** Entropy of the lens distribution, nats. */
  entropy: number[];
  /** Its most probable tokens. */
  top: LensToken[][];
}

/** The lens of one language at one layer, averaged over its items. */
export interface LensLayer {
  /** 0 = embedding output, l = after decoder layer l; L is the model's output. */
  layer: number;
  /** Mean answer mass in the prompt's language, [0, 1]. */
  answerMass: number;
  /** Mean English answer mass, [0, 1]. */
  englishMass: number;
  /** Mean entropy, nats. */
  entropy: number;
  /** The most probable tokens of the mean distribution (1/N) sum_i p_l(i). */
  top: LensToken[];
}

/** The lens of one language: per-layer means and every item. */
export interface LensLanguage {
  lang: string;
  /** L + 1 entries, by layer. */
  layers: LensLayer[];
  items: LensItem[];
}

/** Last-token states of one layer for every item of every language, rows in set order. */
export interface KeptStates {
  layer: number;
  /** Which item each row is. */
  rows: { lang: string; index: number }[];
  /** f32 [N, D], row-major. */
  data: Float32Array;
}

/** What {@link probe} read from the model. */
export interface ProbeResult {
  /** L, the number of decoder layers; layers are indexed 0..L. */
  numLayers: number;
  /** D, the hidden size. */
  hiddenSize: number;
  /** One entry per set (empty when `lens` is false). */
  lens: LensLanguage[];
  /** Per language: the mean last-token state of each layer, L + 1 vectors [D] (float64). */
  means: Map<string, Float64Array[]>;
  /** One entry per `keepLayers` layer. */
  kept: KeptStates[];
}

/**
 * Runs `rows` as one left-padded batch.
 * @returns states f32 [(L + 1) B, D], row l B + b = the residual stream of row b at its last
 *   position after layer l (0: embeddings); with `lens`, their lens logits f32 [(L + 1) B, V]
 */
function lastPosition(model: LlamaModel, rows: readonly (readonly number[])[], lens: boolean): { states: Tensor; logits: Tensor | null } {
  const B = rows.length;
  const { ids, mask, T } = leftPad(rows);
  return noGrad(() =>
    tidy(() => {
      const input = tensor(ids, { device: model.device, shape: [B, T] });
      const hidden = model.forward(input, { attentionMask: mask, outputHiddenStates: true, logits: "none" }).hiddenStates!;
      // L + 1 of [B, 1, D] -> [(L + 1) B, D]
      const states = concat(hidden.map((h) => h.slice(1, T - 1, T)), 0).reshape([-1, model.config.hidden_size]);
      return { states, logits: lens ? lensLogits(model, states) : null };
    }),
  );
}

/** Checks a set against the model; throws RangeError naming the set and the first problem. */
function checkSet(set: ProbeSet, V: number): void {
  const n = set.prompts.length;
  const where = `probe: set "${set.lang}"`;
  if (n === 0) throw new RangeError(`${where}: has no prompts`);
  if (set.indices.length !== n || set.labels.length !== n) {
    throw new RangeError(`${where}: ${n} prompts but ${set.indices.length} indices and ${set.labels.length} labels`);
  }
  if (set.answerTokens.length !== set.englishTokens.length) throw new RangeError(`${where}: answer and English token sets disagree on the number of classes`);
  const empty = set.prompts.findIndex((p) => p.length === 0);
  if (empty >= 0) throw new RangeError(`${where}: prompt ${empty} has no tokens`);
  const badLabel = set.labels.findIndex((c) => !(c >= 0 && c < set.answerTokens.length));
  if (badLabel >= 0) throw new RangeError(`${where}: label ${set.labels[badLabel]} of item ${badLabel} is not a class`);
  const badId = [...set.answerTokens, ...set.englishTokens].flat().find((id) => !(id >= 0 && id < V));
  if (badId !== undefined) throw new RangeError(`${where}: label token id ${badId} is outside the model's vocabulary [0, ${V})`);
}

/**
 * Runs `model` over every set's prompts and reads the last-token residual stream of every
 * layer (see the file comment). Works on any device; the statistics are computed on the host
 * in float64 from f32 states and logits.
 * @throws RangeError for an empty set, a set whose arrays disagree, an empty prompt, a label
 *   outside the classes, a token id outside the vocabulary, two sets of one language, or a
 *   keepLayers entry outside [0, L].
 */
export async function probe(model: LlamaModel, tokenizer: Pick<Tokenizer, "idToToken">, sets: readonly ProbeSet[], opts: ProbeOptions = {}): Promise<ProbeResult> {
  const L = model.config.num_hidden_layers;
  const D = model.config.hidden_size;
  const V = model.config.vocab_size;
  const withLens = opts.lens ?? true;
  const k = opts.topK ?? 5;
  const batchSize = Math.max(1, opts.batchSize ?? 8);
  const keepLayers = [...new Set(opts.keepLayers ?? [])];
  const outside = keepLayers.find((l) => !Number.isInteger(l) || l < 0 || l > L);
  if (outside !== undefined) throw new RangeError(`probe: layer ${outside} is outside [0, ${L}]`);
  for (const set of sets) checkSet(set, V);
  const twice = sets.find((set, i) => sets.findIndex((t) => t.lang === set.lang) !== i);
  if (twice) throw new RangeError(`probe: two sets for language "${twice.lang}"`);

  const total = sets.reduce((s, set) => s + set.prompts.length, 0);
  const kept: KeptStates[] = keepLayers.map((layer) => ({ layer, rows: [], data: new Float32Array(total * D) }));
  const result: ProbeResult = { numLayers: L, hiddenSize: D, lens: [], means: new Map(), kept };
  let row0 = 0; // first row of this set in `kept`
  for (const set of sets) {
    const n = set.prompts.length;
    const sums = Array.from({ length: L + 1 }, () => new Float64Array(D));
    const meanDist = withLens ? Array.from({ length: L + 1 }, () => new Float64Array(V)) : [];
    const items: LensItem[] = new Array(n);
    for (const kl of kept) for (let i = 0; i < n; i++) kl.rows.push({ lang: set.lang, index: set.indices[i]! });
    const order = [...set.prompts.keys()].sort((a, b) => set.prompts[a]!.length - set.prompts[b]!.length);
    opts.onProgress?.(set.lang, 0, n);
    for (let s = 0; s < n; s += batchSize) {
      const batch = order.slice(s, s + batchSize);
      const B = batch.length;
      const out = lastPosition(model, batch.map((i) => set.prompts[i]!), withLens);
      const states = await out.states.data();
      const logits = out.logits ? await out.logits.data() : null;
      out.states.dispose();
      out.logits?.dispose();
      batch.forEach((i, b) => {
        const label = set.labels[i]!;
        const item: LensItem = { index: set.indices[i]!, label, answerMass: [], englishMass: [], entropy: [], top: [] };
        for (let l = 0; l <= L; l++) {
          const r = l * B + b;
          const h = states.subarray(r * D, (r + 1) * D);
          for (let d = 0; d < D; d++) sums[l]![d] += h[d]!;
          for (const kl of kept) if (kl.layer === l) kl.data.set(h, (row0 + i) * D);
          if (!logits) continue;
          // The masses by the evaluation's own rule (constrained decoding), then the rest of
          // the distribution from a float64 softmax.
          const [answer, english] = prefixMasses(logits, r * V, V, [set.answerTokens[label]!, set.englishTokens[label]!]);
          const p = softmaxRow(logits, r * V, V);
          item.answerMass.push(answer!);
          item.englishMass.push(english!);
          item.entropy.push(entropyOf(p));
          item.top.push(namedTokens(tokenizer, topK(p, k)));
          const acc = meanDist[l]!;
          for (let v = 0; v < V; v++) acc[v] += p[v]!;
        }
        items[i] = item;
      });
      opts.onProgress?.(set.lang, Math.min(s + batchSize, n), n);
    }
    result.means.set(set.lang, sums.map((m) => m.map((x) => x / n)));
    if (withLens) {
      const mean = (f: (it: LensItem) => number[], l: number) => items.reduce((acc, it) => acc + f(it)[l]!, 0) / n;
      const layers = meanDist.map((acc, layer) => ({
        layer,
        answerMass: mean((it) => it.answerMass, layer),
        englishMass: mean((it) => it.englishMass, layer),
        entropy: mean((it) => it.entropy, layer),
        top: namedTokens(tokenizer, topK(acc.map((x) => x / n), k)),
      }));
      result.lens.push({ lang: set.lang, layers, items });
    }
    row0 += n;
  }
  return result;
}
