import { beforeAll, describe, expect, it } from "vitest";
import { entropyOf, lensLogits, softmaxRow, topK } from "../src/interp/lens.ts";
import { probe, type ProbeSet } from "../src/interp/probe.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import { Linear, type LlamaModel } from "../src/model/llama.ts";
import { loadModel } from "../src/model/load.ts";
import { noGrad } from "../src/tensor/autograd.ts";
import { tensor, zeros } from "../src/tensor/ops/create.ts";
import { tidy } from "../src/tensor/scope.ts";
import { expectClose } from "./helpers/close.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

// Fixture checkpoints have no tokenizer: name tokens by id.
const names = { idToToken: (id: number) => `t${id}` };

/** Three prompts of different lengths, so that a batch of 2 pads one row. */
function makeSet(): ProbeSet {
  return {
    lang: "de",
    prompts: [
      [1, 17, 42, 5, 9],
      [1, 3, 3, 200, 31, 77, 12, 8, 64],
      [1, 250, 19, 19, 140, 6, 7, 300 - 1, 11, 2, 5, 88],
    ],
    indices: [4, 7, 9],
    labels: [0, 1, 0],
    answerTokens: [[5, 9, 40], [77]],
    englishTokens: [[12], [13, 14]],
  };
}

/** The model's own next-token distribution after `ids` (unbatched, unpadded), float64. */
async function modelOutput(model: LlamaModel, ids: number[]): Promise<Float64Array> {
  const logits = noGrad(() => model.forward(tensor(Int32Array.from(ids), { device: model.device, shape: [1, ids.length] }), { logits: "last" }).logits!);
  const row = await logits.data();
  logits.dispose();
  return softmaxRow(row, 0, row.length);
}

/**
 * Tolerances: the probe runs f32 forward passes in padded batches, the references an unpadded
 * f32 pass or a float64 host computation. Probabilities then agree to ~1e-6, so masses are
 * compared to 5 decimals (|diff| < 5e-6) and entropies (sums of V = 320 terms p ln p, up to
 * ln V = 5.8 nats) to 4; means of the same float64 values to 12; residual states that only
 * add exact zeros to the f32 embedding to 5e-7 (they are equal).
 */

describe("logit lens", () => {
  let model: LlamaModel;
  beforeAll(async () => {
    model = await loadModel(fixtureDir("llama-untied"), { device: cpuDevice() });
  });

  it("lensLogits of the last hidden state equals the model's logits", async () => {
    const ids = [1, 17, 42, 5, 9, 100];
    const { lens, logits } = noGrad(() =>
      tidy(() => {
        const out = model.forward(tensor(Int32Array.from(ids), { device: model.device, shape: [1, ids.length] }), { outputHiddenStates: true });
        return { lens: lensLogits(model, out.hiddenStates![model.config.num_hidden_layers]!), logits: out.logits! };
      }),
    );
    const a = await lens.data();
    const b = await logits.data();
    expect(Array.from(a)).toEqual(Array.from(b));
    lens.dispose();
    logits.dispose();
  });

  it("at the last layer, equals the model's output for every item of a padded batch", async () => {
    const set = makeSet();
    const r = await probe(model, names, [set], { batchSize: 2, topK: 4 });
    const L = model.config.num_hidden_layers;
    expect(r.lens[0]!.layers).toHaveLength(L + 1);
    for (const [i, item] of r.lens[0]!.items.entries()) {
      const p = await modelOutput(model, [...set.prompts[i]!]);
      const mass = (ids: readonly number[]) => ids.reduce((s, id) => s + p[id]!, 0);
      expect(item.index).toBe(set.indices[i]);
      expect(item.answerMass[L]).toBeCloseTo(mass(set.answerTokens[set.labels[i]!]!), 5);
      expect(item.englishMass[L]).toBeCloseTo(mass(set.englishTokens[set.labels[i]!]!), 5);
      expect(item.entropy[L]).toBeCloseTo(entropyOf(p), 4);
      expect(item.top[L]!.map((t) => t.id)).toEqual(topK(p, 4).map(([id]) => id));
      expect(item.top[L]![0]!.token).toBe(`t${item.top[L]![0]!.id}`);
    }
    // The per-language layer values are the item means.
    const last = r.lens[0]!.layers[L]!;
    expect(last.answerMass).toBeCloseTo(r.lens[0]!.items.reduce((s, it) => s + it.answerMass[L]!, 0) / 3, 12);
  });

  it("on a model whose layers are identities, every layer reads the embedding through norm and unembedding", async () => {
    const m = await loadModel(fixtureDir("llama-untied"), { device: cpuDevice() });
    const { hidden_size: D, intermediate_size: F, num_attention_heads: H, head_dim: Dh, vocab_size: V } = m.config;
    // Zero output projections: attention and MLP add nothing, so h_l = h_0 = embedding.
    for (const layer of m.layers) {
      (layer.self_attn.o_proj as Linear).weight.dispose();
      (layer.mlp.down_proj as Linear).weight.dispose();
      layer.self_attn.o_proj = new Linear(zeros([D, H * Dh], { device: m.device }));
      layer.mlp.down_proj = new Linear(zeros([D, F], { device: m.device }));
    }
    const set = makeSet();
    const r = await probe(m, names, [set], { batchSize: 3, topK: 3, keepLayers: [0, 2] });
    const emb = await m.embed_tokens.data();
    const normW = await m.norm.data();
    const head = await m.lm_head.data();
    for (const [i, item] of r.lens[0]!.items.entries()) {
      // Expected: softmax(W_U rmsnorm(e)) for the embedding e of the prompt's last token, on the host.
      const id = set.prompts[i]!.at(-1)!;
      const e = Array.from(emb.subarray(id * D, (id + 1) * D));
      const rms = Math.sqrt(e.reduce((s, x) => s + x * x, 0) / D + m.config.rms_norm_eps);
      const n = e.map((x, d) => (x / rms) * normW[d]!);
      const logits = Float64Array.from({ length: V }, (_, v) => n.reduce((s, x, d) => s + x * head[v * D + d]!, 0));
      const p = softmaxRow(logits, 0, V);
      for (let l = 0; l <= m.config.num_hidden_layers; l++) {
        expect(item.entropy[l]).toBeCloseTo(entropyOf(p), 4);
        expect(item.answerMass[l]).toBeCloseTo(set.answerTokens[set.labels[i]!]!.reduce((s, t) => s + p[t]!, 0), 5);
        expect(item.top[l]!.map((t) => t.id)).toEqual(topK(p, 3).map(([t]) => t));
      }
      // The kept states of every layer are the embedding row itself.
      for (const kept of r.kept) {
        const row = Array.from(kept.data.subarray(i * D, (i + 1) * D));
        expectClose(row, e, { atol: 5e-7, rtol: 0 }, `kept state of item ${i}`);
        expect(kept.rows[i]).toEqual({ lang: "de", index: set.indices[i] });
      }
    }
    m.dispose();
  });

  it("rejects sets that disagree with themselves or the model", async () => {
    const set = makeSet();
    await expect(probe(model, names, [{ ...set, labels: [0, 1] }])).rejects.toThrow(/3 prompts but 3 indices and 2 labels/);
    await expect(probe(model, names, [{ ...set, answerTokens: [[5], [320]] }])).rejects.toThrow(/outside the model's vocabulary/);
    await expect(probe(model, names, [set, set])).rejects.toThrow(/two sets/);
    await expect(probe(model, names, [set], { keepLayers: [3] })).rejects.toThrow(/outside \[0, 2\]/);
  });
});
