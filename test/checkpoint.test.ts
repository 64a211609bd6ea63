import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import { checkpoint } from "../src/tensor/checkpoint.ts";
import { Rng } from "../src/tensor/random.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

/**
 * Activation checkpointing against the same computation without it: the recomputation runs the
 * same ops in the same order on the same values (dropout's Rng rewound), so every gradient is
 * equal bit for bit; and the memory held between forward and backward shrinks to the layer
 * inputs.
 */
const cpu = qa.cpuDevice();

/** The LoRA gradients of one training forward/backward, and the bytes live just before backward. */
async function loraStep(name: string, checkpointing: boolean): Promise<{ grads: number[][]; liveBeforeBackward: number }> {
  const model = await loadModel(fixtureDir(name), { device: cpu });
  const adapter = qa.applyLora(model, { r: 4, target_modules: "all-linear", seed: 1, lora_dropout: 0.1 });
  const r = new Rng(9);
  // Random B so that both factors have gradients (B = 0 zeroes dL/dA).
  for (const m of adapter.modules.values()) cpu.assign(m.lora_B, qa.randn(m.lora_B.shape as number[], { device: cpu, rng: r, std: 0.1 }));
  const dropout = new Rng(5);
  adapter.setDropoutRng(dropout);
  model.gradientCheckpointing = checkpointing ? { rngs: [dropout] } : null;
  const ids = qa.tensor(Int32Array.from({ length: 2 * 16 }, (_, i) => (i * 37 + 11) % model.config.vocab_size), { device: cpu, shape: [2, 16] });
  const base = cpu.liveBytes();
  let live = 0;
  qa.tidy(() => {
    const loss = model.forward(ids, {}).logits!.square().mean();
    live = cpu.liveBytes() - base;
    loss.backward();
  });
  const grads = await Promise.all([...adapter.modules.values()].flatMap((m) => [m.lora_A, m.lora_B]).map(async (p) => Array.from(await p.grad!.data())));
  model.dispose();
  return { grads, liveBeforeBackward: live };
}

describe("gradient checkpointing", () => {
  test("checkpoint(fn, x): the gradients of x and of fn's parameters equal those without it", async () => {
    const w = qa.randn([4, 4], { device: cpu, seed: 1 }).requireGrad();
    const fn = (x: qa.Tensor) => x.matmul(w).silu().matmul(w).tanh();
    const grads = async (ck: boolean) => {
      const x = qa.randn([3, 4], { device: cpu, seed: 2 }).requireGrad();
      w.grad = null;
      qa.tidy(() => (ck ? checkpoint(fn, x) : fn(x)).sum().backward());
      return [Array.from(await x.grad!.data()), Array.from(await w.grad!.data())];
    };
    expect(await grads(true)).toEqual(await grads(false));
  });

  for (const name of ["llama-untied", "llama-nf4"]) {
    test(`${name}: LoRA gradients with dropout are bit for bit those without checkpointing, with less memory held`, async () => {
      const plain = await loraStep(name, false);
      const ck = await loraStep(name, true);
      expect(ck.grads).toEqual(plain.grads);
      // Kept between forward and backward: the layer inputs [B, T, D] (and the logits) instead
      // of every intermediate of every layer.
      expect(ck.liveBeforeBackward).toBeLessThan(0.5 * plain.liveBeforeBackward);
    });
  }
});
