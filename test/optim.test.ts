import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { expectClose } from "./helpers/close.ts";

/**
 * Optimizer steps against their closed forms (computed here in float64 from the formulas of
 * torch.optim.SGD / AdamW and clip_grad_norm_). f32 parameters: tolerance 1e-6 relative,
 * a few ulps of the values involved.
 */
const cpu = qa.cpuDevice();

function param(values: number[]): qa.Tensor {
  return qa.tensor(values, { device: cpu, requiresGrad: true });
}

describe("AdamW", () => {
  test("two steps equal the closed form with bias correction and decoupled weight decay", async () => {
    const p0 = [0.5, -1.5, 2];
    const grads = [
      [0.1, -0.2, 0.3],
      [-0.4, 0.5, 0.05],
    ];
    const h = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
    const p = param(p0);
    const opt = new qa.AdamW([p], h);
    // Reference: torch.optim.AdamW, step t: p *= 1 - lr wd; m, v moments; p -= lr mhat / (sqrt(vhat) + eps).
    const ref = p0.slice();
    const m = [0, 0, 0];
    const v = [0, 0, 0];
    for (let t = 1; t <= grads.length; t++) {
      const g = grads[t - 1]!;
      p.grad = qa.tensor(g, { device: cpu });
      opt.step();
      for (let i = 0; i < 3; i++) {
        ref[i]! -= h.lr * h.weightDecay * ref[i]!;
        m[i] = h.beta1 * m[i]! + (1 - h.beta1) * g[i]!;
        v[i] = h.beta2 * v[i]! + (1 - h.beta2) * g[i]! ** 2;
        const mhat = m[i]! / (1 - h.beta1 ** t);
        const vhat = v[i]! / (1 - h.beta2 ** t);
        ref[i]! -= (h.lr * mhat) / (Math.sqrt(vhat) + h.eps);
      }
      expectClose(await p.data(), ref, 1e-6, `step ${t}`);
      opt.zeroGrad();
    }
  });
});

describe("SGD", () => {
  test("momentum and weight decay follow torch.optim.SGD", async () => {
    const p = param([1, -2]);
    const opt = new qa.SGD([p], { lr: 0.1, momentum: 0.9, weightDecay: 0.5 });
    const ref = [1, -2];
    const buf = [0, 0];
    const grads = [
      [0.3, -0.1],
      [0.2, 0.4],
    ];
    for (let t = 0; t < 2; t++) {
      p.grad = qa.tensor(grads[t]!, { device: cpu });
      opt.step();
      for (let i = 0; i < 2; i++) {
        const d = grads[t]![i]! + 0.5 * ref[i]!;
        buf[i] = t === 0 ? d : 0.9 * buf[i]! + d;
        ref[i]! -= 0.1 * buf[i]!;
      }
      expectClose(await p.data(), ref, 1e-6);
      opt.zeroGrad();
    }
  });
});

describe("clipGradNorm", () => {
  test("scales gradients to the max norm and returns the norm before clipping", async () => {
    const a = param([0, 0]);
    const b = param([0]);
    a.grad = qa.tensor([3, 0], { device: cpu });
    b.grad = qa.tensor([4], { device: cpu });
    const norm = qa.clipGradNorm([a, b], 1);
    expect(await norm.item()).toBeCloseTo(5, 6);
    const f = 1 / (5 + 1e-6);
    expectClose(await a.grad.data(), [3 * f, 0], 1e-6);
    expectClose(await b.grad.data(), [4 * f], 1e-6);
  });
  test("leaves gradients below the max norm unchanged", async () => {
    const a = param([0, 0]);
    a.grad = qa.tensor([0.3, 0.4], { device: cpu });
    qa.clipGradNorm([a], 1);
    expectClose(await a.grad.data(), [0.3, 0.4], 1e-6);
  });
});
