import { join } from "node:path";
import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel, type LoadOptions } from "../src/model/load.ts";
import type { LlamaModel } from "../src/model/llama.ts";
import { openSafetensors } from "../src/model/safetensors.ts";
import type { Backend } from "../src/tensor/backend.ts";
import { PackedWeight } from "../src/tensor/weight.ts";
import { describeWebGpu, testDevices } from "./helpers/devices.ts";
import { fixtureDir, maxAbs, maxDiffAtTokens } from "./helpers/fixtures.ts";
import { random } from "./helpers/random.ts";

/**
 * Weight storage dtypes through the loader, on every device:
 * - bf16 / f16: the committed BF16 (qwen2-tied) and F16 (mistral-sliding) fixtures stay 16-bit
 *   on the device by default, and their logits equal those of the same checkpoint loaded as f32.
 *   On cpu both paths sum the same f32 values in doubles in the same order: identical bits. On
 *   webgpu and wasm the packed kernels and the f32 matmul kernels add in different orders, so the
 *   logits agree to f32 rounding of sums of 32-64 terms through two layers: 1e-5 of the logit
 *   scale, while reading one 16-bit half wrong moves logits by O(1).
 * - NF4: checkpoints saved 4-bit in the transformers + bitsandbytes layout by
 *   scripts/make_nf4_fixtures.py (llama-nf4 double-quantized, qwen2-nf4 not) load to exactly the
 *   weights that script dequantized, and their logits equal its float64 forward of those weights
 *   within 1e-4 of the logit scale (model_golden.test.ts's f32 bound). Quantizing the BF16
 *   fixture at load gives exactly the weights the script quantized from it.
 */
const cpu = qa.cpuDevice();

async function expected(name: string) {
  const f = await openSafetensors(join(fixtureDir(name), "expected.safetensors"));
  const [B, T] = f.info("input_ids").shape as [number, number];
  const rows = (a: Int32Array) => Array.from({ length: B }, (_, b) => Array.from(a.subarray(b * T, (b + 1) * T)));
  const dequantized = new Map<string, Float32Array>();
  for (const n of f.names()) if (n.startsWith("dequantized.")) dequantized.set(n.slice("dequantized.".length), await f.readF32(n));
  const out = {
    ids: await f.readI32("input_ids"),
    mask: rows(await f.readI32("attention_mask")),
    logits: await f.readF32("logits"),
    B,
    T,
    V: f.info("logits").shape[2]!,
    dequantized,
  };
  await f.close();
  return out;
}

async function logits(model: LlamaModel, ids: Int32Array, mask: number[][], B: number, T: number): Promise<Float32Array> {
  const x = qa.tensor(ids, { device: model.device, shape: [B, T] });
  return (await qa.tidy(() => qa.noGrad(() => model.forward(x, { attentionMask: mask }).logits!)).data()) as Float32Array;
}

async function sameLogits(name: string, device: Backend, exact: boolean): Promise<void> {
  const e = await expected(name);
  const packed = await loadModel(fixtureDir(name), { device });
  const f32 = await loadModel(fixtureDir(name), { device, dtype: "f32" });
  expect(packed.embed_tokens).toBeInstanceOf(PackedWeight);
  expect(f32.embed_tokens).toBeInstanceOf(qa.Tensor);
  const a = await logits(packed, e.ids, e.mask, e.B, e.T);
  const b = await logits(f32, e.ids, e.mask, e.B, e.T);
  if (exact) expect(Array.from(a)).toEqual(Array.from(b));
  else expect(maxDiffAtTokens(a, b, e.mask, e.V)).toBeLessThanOrEqual(1e-5 * maxAbs(b));
  packed.dispose();
  f32.dispose();
}

async function nf4Golden(name: string, device: Backend): Promise<void> {
  const e = await expected(name);
  const model = await loadModel(fixtureDir(name), { device });
  const weights = model.namedWeights();
  for (const [key, want] of e.dequantized) {
    const w = weights.get(key)!;
    expect(w, key).toBeInstanceOf(PackedWeight);
    expect((w as PackedWeight).dtype).toBe("nf4");
    expect(Array.from(await w.data()), key).toEqual(Array.from(want));
  }
  const got = await logits(model, e.ids, e.mask, e.B, e.T);
  expect(maxDiffAtTokens(got, e.logits, e.mask, e.V)).toBeLessThanOrEqual(1e-4 * maxAbs(e.logits));
  model.dispose();
}

describe("16-bit weights stay 16-bit and give the f32 path's logits", () => {
  test("cpu: bf16 (qwen2-tied), bit for bit", () => sameLogits("qwen2-tied", cpu, true));
  test("cpu: f16 (mistral-sliding), bit for bit", () => sameLogits("mistral-sliding", cpu, true));
  testDevices("bf16 (qwen2-tied)", (device) => sameLogits("qwen2-tied", device, false));
  testDevices("f16 (mistral-sliding)", (device) => sameLogits("mistral-sliding", device, false));

  test("device bytes: a bf16 checkpoint holds 2 bytes per matrix weight, f32 4", async () => {
    const before = cpu.liveBytes();
    const m16 = await loadModel(fixtureDir("qwen2-tied"), { device: cpu });
    const b16 = cpu.liveBytes() - before;
    const m32 = await loadModel(fixtureDir("qwen2-tied"), { device: cpu, dtype: "f32" });
    const b32 = cpu.liveBytes() - before - b16;
    let matrices = 0;
    let vectors = 0;
    for (const w of m32.namedWeights().values()) (w.shape.length === 2 ? (matrices += w.shape[0]! * w.shape[1]!) : (vectors += w.shape[0]!));
    expect(b32).toBe(4 * (matrices + vectors));
    expect(b16).toBe(2 * matrices + 4 * vectors);
    m16.dispose();
    m32.dispose();
  });
});

describe("NF4 weights", () => {
  for (const name of ["llama-nf4", "qwen2-nf4"]) {
    test(`cpu: ${name} (bitsandbytes 4-bit layout) loads to the reference's weights and logits`, () => nf4Golden(name, cpu));
    testDevices(`${name} loads to the reference's weights and logits`, (device) => nf4Golden(name, device));
  }

  test("quantizing the bf16 fixture at load gives exactly the weights bitsandbytes' algorithm gave", async () => {
    const atLoad = await loadModel(fixtureDir("qwen2-tied"), { device: cpu, dtype: "nf4" });
    const saved = await loadModel(fixtureDir("qwen2-nf4"), { device: cpu });
    const a = atLoad.namedWeights();
    for (const [key, w] of saved.namedWeights()) {
      const v = a.get(key)!;
      expect(v.constructor, key).toBe(w.constructor);
      if (w instanceof PackedWeight) expect((v as PackedWeight).dtype).toBe(w.dtype);
      expect(Array.from(await v.data()), key).toEqual(Array.from(await w.data()));
    }
    // The embedding keeps the checkpoint's 16 bits unless asked.
    expect((a.get("model.embed_tokens.weight") as PackedWeight).dtype).toBe("bf16");
    const all = await loadModel(fixtureDir("qwen2-tied"), { device: cpu, dtype: "nf4", quantizeEmbeddings: true });
    expect((all.embed_tokens as PackedWeight).dtype).toBe("nf4");
    for (const m of [atLoad, saved, all]) m.dispose();
  });

  test("LoRA gradients over an NF4 base match central finite differences of the f32 loss", async () => {
    const model = await loadModel(fixtureDir("llama-nf4"), { device: cpu });
    const adapter = qa.applyLora(model, { r: 2, target_modules: ["q_proj", "v_proj", "down_proj"], seed: 3 });
    const r = random(7);
    const params = [...adapter.modules.values()].flatMap((m) => [m.lora_A, m.lora_B]);
    // lora_B starts at 0, where d/dA vanishes: start from random B so both factors get gradients.
    for (const m of adapter.modules.values()) cpu.assign(m.lora_B, qa.tensor(Float32Array.from({ length: m.lora_B.size }, () => r() * 0.2), { device: cpu, shape: m.lora_B.shape }));
    const ids = qa.tensor(Int32Array.from([5, 17, 3, 99, 250, 8]), { device: cpu, shape: [1, 6] });
    const probe = qa.tensor(Float32Array.from({ length: 6 * model.config.vocab_size }, r), { device: cpu, shape: [1, 6, model.config.vocab_size] });
    const loss = () => model.forward(ids, {}).logits!.mul(probe).sum();
    const l = loss();
    l.backward();
    const grads = await Promise.all(params.map(async (p) => p.grad!.data()));
    // Directional derivatives along 3 random directions: (L(p + h v) - L(p - h v)) / 2h vs <grad, v>.
    // The loss (a sum of 1920 logits times weights, |L| ~ 1e2) carries f32 rounding noise ~1e-4,
    // which h = 2e-3 turns into ~0.03 on derivatives of ~1e2 (3e-4 relative); the truncation
    // error h^2 L'''/6 is of the same order. A wrong backward (a transposed g W, a lost scale) errs by O(1).
    const h = 2e-3;
    for (let d = 0; d < 3; d++) {
      const dirs = params.map((p) => Float32Array.from({ length: p.size }, r));
      const shift = async (sign: number) => {
        for (const [i, p] of params.entries()) {
          const v = await p.data();
          cpu.assign(p, qa.tensor(Float32Array.from(v, (x, j) => x + sign * h * dirs[i]![j]!), { device: cpu, shape: p.shape }));
        }
      };
      await shift(1);
      const up = await qa.noGrad(loss).item();
      await shift(-2);
      const down = await qa.noGrad(loss).item();
      await shift(1);
      const fd = (up - down) / (2 * h);
      let dot = 0;
      dirs.forEach((v, i) => v.forEach((x, j) => (dot += x * grads[i]![j]!)));
      expect(Math.abs(fd - dot), `fd ${fd} vs ${dot}`).toBeLessThanOrEqual(1e-3 * (1 + Math.abs(dot)));
    }
    model.dispose();
  });

  test("bad requests are refused before any compute", async () => {
    await expect(loadModel(fixtureDir("qwen2-tied"), { device: cpu, dtype: "int4" as LoadOptions["dtype"] })).rejects.toThrow(/unknown weight dtype "int4"/);
  });
});

describeWebGpu("a packed weight above the binding limit", { maxBindingBytes: 4096 }, (testOn) => {
  testOn("fails the load naming the tensor, its bytes, the limit and what was allocated", async (gpu) => {
    const before = gpu.liveBytes();
    // qwen2-tied's bf16 embedding [300, 32] is 19,200 bytes; the lowered limit is 4,096.
    await expect(loadModel(fixtureDir("qwen2-tied"), { device: gpu })).rejects.toThrow(
      /^loadModel: model\.embed_tokens\.weight \[300,32\]: uploadWeight: a bf16 weight \[300,32\] needs 19200 bytes in one binding, above the limit of 4096 bytes; \d+ bytes were allocated before it$/,
    );
    expect(gpu.liveBytes()).toBe(before);
  });
});
