import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { webgpuOrSkip } from "./helpers/devices.ts";

/**
 * Deterministic release: 200 forward + backward + AdamW steps of a small network inside `tidy`
 * leave the bytes held by live storages exactly where they were after the first step (the
 * parameters, their gradients and the optimizer moments), on both devices.
 */
async function liveBytesOverSteps(device: qa.Backend): Promise<number[]> {
  const w1 = qa.randn([16, 32], { device, seed: 1, std: 0.2 }).requireGrad();
  const w2 = qa.randn([32, 8], { device, seed: 2, std: 0.2 }).requireGrad();
  const norm = qa.ones([32], { device }).requireGrad();
  const x = qa.randn([4, 5, 16], { device, seed: 3 });
  const targets = qa.tensor(new Int32Array(20).map((_, i) => i % 8), { device, shape: [4, 5] });
  const opt = new qa.AdamW([w1, w2, norm], { lr: 1e-3 });
  const samples: number[] = [];
  for (let step = 0; step < 200; step++) {
    qa.tidy(() => {
      const h = qa.rmsNorm(x.matmul(w1).silu(), norm, 1e-5);
      const loss = qa.crossEntropy(h.matmul(w2).softmax().add(1e-3).log(), targets);
      opt.zeroGrad();
      loss.backward();
      qa.clipGradNorm([w1, w2, norm], 1.0);
      opt.step();
    });
    if (step === 0 || step === 199) {
      await device.sync();
      samples.push(device.liveBytes());
    }
  }
  for (const t of [w1, w2, norm, x, targets]) t.dispose();
  opt.dispose();
  return samples;
}

describe("live device bytes stay flat over 200 training steps", () => {
  test("cpu", async () => {
    const [first, last] = await liveBytesOverSteps(qa.cpuDevice());
    expect(last).toBe(first);
  });
  test("webgpu", async (ctx) => {
    const gpu = await webgpuOrSkip(ctx);
    const [first, last] = await liveBytesOverSteps(gpu);
    expect(last).toBe(first);
  });
});
