import { describe, expect, it } from "vitest";
import { PrefixCache, commonPrefix, truncateLeft, windowLogits } from "../src/eval/batch.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import type { LlamaModel } from "../src/model/llama.ts";
import { loadModel } from "../src/model/load.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { noGrad } from "../src/tensor/autograd.ts";
import { tensor } from "../src/tensor/ops/create.ts";
import { Rng } from "../src/tensor/random.ts";
import { expectClose } from "./helpers/close.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

/** Logits [W, V] at the last W positions of one unpadded sequence, by a plain forward pass. */
async function reference(model: LlamaModel, ids: number[], W: number): Promise<Float32Array> {
  const V = model.config.vocab_size;
  const logits = noGrad(() => model.forward(tensor(Int32Array.from(ids), { device: model.device, shape: [1, ids.length] })).logits!);
  const all = (await logits.data()) as Float32Array;
  logits.dispose();
  return all.slice((ids.length - W) * V);
}

/**
 * The three runs (cached prefix, left-padded full prompts, one unpadded prompt) compute the same
 * tokens' logits on the cpu device, in f32 with float64 accumulation: they agree to an f32 ulp
 * or two (|logit| <= 21 in these models, an ulp <= 2e-6). 1e-4 absolute is a wide margin for a
 * change of summation order; a wrong position, mask or cache offset moves logits by 0.1 or more.
 */
const SAME_LOGITS = { atol: 1e-4, rtol: 0 };

/**
 * A shared prefix of 9 tokens and rows of 2..6 own tokens: the batched, padded run with the
 * prefix's KV cache (padding between prefix and row) and the batched, left-padded full prompts
 * must both give each row's logits from an unpadded forward pass of prefix + row.
 */
async function checkModel(model: LlamaModel, W: number, lengths: number[]): Promise<void> {
  const V = model.config.vocab_size;
  const rng = new Rng(11);
  const ids = (n: number) => Array.from({ length: n }, () => 1 + rng.int(V - 1));
  const prefixIds = ids(9);
  const rows = lengths.map(ids);
  const prefix = PrefixCache.build(model, prefixIds);
  try {
    const cached = await windowLogits(model, rows, W, prefix);
    const full = await windowLogits(model, rows.map((r) => [...prefixIds, ...r]), W, null);
    for (let b = 0; b < rows.length; b++) {
      const want = await reference(model, [...prefixIds, ...rows[b]!], W);
      const span = [b * W * V, (b + 1) * W * V] as const;
      expectClose(cached.slice(...span), want, SAME_LOGITS, `row ${b}, prefix in the KV cache`);
      expectClose(full.slice(...span), want, SAME_LOGITS, `row ${b}, left-padded full prompt`);
    }
  } finally {
    prefix.dispose();
  }
}

describe("shared-prefix KV cache gives the logits of the full prompt", () => {
  it("tiny model (Mistral tokenizer's vocabulary), next-token window and a 3-token window", async () => {
    const model = await loadModel(await ensureTinyModel(), { device: cpuDevice() });
    await checkModel(model, 1, [2, 5, 3, 6]);
    await checkModel(model, 3, [4, 6, 3]);
    model.dispose();
  });

  it.each(["llama-untied", "qwen2-tied"])("fixture %s", async (name) => {
    const model = await loadModel(fixtureDir(name), { device: cpuDevice() });
    await checkModel(model, 1, [2, 5, 3]);
    await checkModel(model, 2, [3, 6]);
    model.dispose();
  });

  it("fixture mistral-sliding (window 3), rows of equal length", async () => {
    // The window counts key slots, padding included (as HF's mask does), so only unpadded
    // batches match the unpadded prompt exactly when prompts exceed the window; real windows
    // (4096 for Mistral-7B) are far longer than the evaluation prompts.
    const model = await loadModel(fixtureDir("mistral-sliding"), { device: cpuDevice() });
    await checkModel(model, 1, [4, 4, 4]);
    model.dispose();
  });
});

describe("token helpers", () => {
  it("commonPrefix", () => {
    expect(commonPrefix([1, 2, 3], [1, 2, 4, 5])).toBe(2);
    expect(commonPrefix([], [1])).toBe(0);
    expect(commonPrefix([7, 8], [7, 8])).toBe(2);
  });

  it("truncateLeft drops the oldest tokens and keeps BOS", () => {
    expect(truncateLeft([1, 10, 11, 12, 13], 3, 1)).toEqual({ ids: [1, 12, 13], dropped: 2 });
    expect(truncateLeft([10, 11, 12, 13], 3, 1)).toEqual({ ids: [11, 12, 13], dropped: 1 });
    expect(truncateLeft([1, 10], 3, 1)).toEqual({ ids: [1, 10], dropped: 0 });
    expect(truncateLeft([5, 6, 7], 2, null)).toEqual({ ids: [6, 7], dropped: 1 });
  });
});
