import { join } from "node:path";
import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel, type LoadOptions } from "../src/model/load.ts";
import { planForDir } from "../src/model/plan.ts";
import type { Backend } from "../src/tensor/backend.ts";
import { testWebGpu } from "./helpers/devices.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

/**
 * The memory plan against independent numbers: the published parameter counts of the paper's
 * models (their model cards and `model.num_parameters()`), closed forms of bytes per dtype, and
 * the live device bytes of a loaded model: exact on cpu; on webgpu packed weights are exact and
 * f32 tensors go through the buffer pool, which rounds each up (at least 256 bytes, size classes
 * 1/8 apart: a few percent of a real model's f32 vectors, which are a few MB in all).
 */
const cpu = qa.cpuDevice();
const config = (name: string) => join(import.meta.dirname, "..", "bench", "configs", name);
const base = { batch: 1, seq: 1 };

describe("memory plan", () => {
  test("parameter counts equal the published ones; f32 and bf16 weights are 4 and 2 bytes each", async () => {
    const published = { "mistral-7b": 7_241_732_096, "qwen2.5-0.5b": 494_032_768, "qwen1.5-1.8b": 1_836_828_672 };
    for (const [name, n] of Object.entries(published)) {
      const f32 = await planForDir(config(name), { ...base, dtype: "f32" });
      expect(f32.params, name).toBe(n);
      expect(f32.lines[0]!.bytes).toBe(4 * n);
      const bf16 = await planForDir(config(name), base);
      // Norm vectors stay f32: 4 bytes for (2 L + 1) D of them (+ Qwen's q/k/v biases).
      const vectors = (bf16.byDType.f32 ?? 0) / 4;
      expect(bf16.lines[0]!.bytes).toBe(2 * (n - vectors) + 4 * vectors);
    }
  });

  test("nf4: 0.5625 bytes per decoder weight, the 16-bit embedding and lm_head kept unless asked (Mistral-7B)", async () => {
    const [V, D, L] = [32000, 4096, 32];
    const vectors = (2 * L + 1) * D;
    const head = 2 * V * D;
    const linears = 7_241_732_096 - vectors - head;
    const p = await planForDir(config("mistral-7b"), { ...base, dtype: "nf4" });
    expect(p.byDType.nf4).toBe(linears * 0.5625);
    expect(p.byDType.bf16).toBe(2 * head);
    const all = await planForDir(config("mistral-7b"), { ...base, dtype: "nf4", quantizeEmbeddings: true });
    expect(all.lines[0]!.bytes).toBe((linears + head) * 0.5625 + 4 * vectors);
    expect(all.lines[0]!.bytes / all.params).toBeLessThan(0.6);
  });

  test("training: LoRA parameters r (in + out) per adapted module; checkpointing keeps less", async () => {
    const train = { r: 8, targets: ["q_proj", "v_proj"], gradientCheckpointing: false };
    const p = await planForDir(config("mistral-7b"), { batch: 4, seq: 512, dtype: "nf4", train });
    const lora = 32 * 8 * (4096 + 4096 + (4096 + 1024));
    expect(p.lines.find((l) => l.what === "lora")!.bytes).toBe(2 * 4 * lora);
    expect(p.lines.find((l) => l.what === "adamw")!.bytes).toBe(2 * 4 * lora);
    const ck = await planForDir(config("mistral-7b"), { batch: 4, seq: 512, dtype: "nf4", train: { ...train, gradientCheckpointing: true } });
    const act = (q: typeof p) => q.lines.find((l) => l.what === "activations")!.bytes;
    expect(act(ck)).toBeLessThan(act(p) / 5);
  });

  /**
   * Loads `name` and compares the bytes it added on `device` with the plan's weights line:
   * equal, but for at most `poolSlack` bytes per f32 tensor (webgpu's buffer pool hands out at
   * least 256 bytes, and size classes 1/8 apart; the tiny fixtures' norm vectors are 128-256 bytes).
   */
  async function liveEqualsPlan(device: Backend, name: string, opts: Pick<LoadOptions, "dtype" | "quantizeEmbeddings">, poolSlack: number): Promise<void> {
    const before = device.liveBytes();
    const model = await loadModel(fixtureDir(name), { device, ...opts });
    const live = device.liveBytes() - before;
    const plan = (await planForDir(fixtureDir(name), { ...base, ...opts })).lines[0]!.bytes;
    const f32 = [...model.namedWeights().values()].filter((w) => w instanceof qa.Tensor).length;
    const what = `${name} ${opts.dtype ?? "default"}: live ${live} vs plan ${plan}`;
    expect(live, what).toBeGreaterThanOrEqual(plan);
    expect(live - plan, what).toBeLessThanOrEqual(poolSlack * f32);
    model.dispose();
  }

  test("cpu: live device bytes of a loaded model equal the plan's weights line exactly", async () => {
    for (const dtype of [undefined, "f32", "bf16", "f16", "nf4"] as const) await liveEqualsPlan(cpu, "qwen2-tied", { dtype }, 0);
    await liveEqualsPlan(cpu, "qwen2-tied", { dtype: "nf4", quantizeEmbeddings: true }, 0);
    await liveEqualsPlan(cpu, "llama-nf4", {}, 0);
    await liveEqualsPlan(cpu, "mistral-sliding", {}, 0);
  });

  testWebGpu("webgpu: packed weights' live bytes equal the plan exactly, f32 vectors within the pool's rounding", async (gpu) => {
    for (const dtype of [undefined, "nf4"] as const) await liveEqualsPlan(gpu, "qwen2-tied", { dtype }, 256);
    await liveEqualsPlan(gpu, "llama-nf4", {}, 256);
  });
});
