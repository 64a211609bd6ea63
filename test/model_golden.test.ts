import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import { testDevices } from "./helpers/devices.ts";
import { FIXTURE_MODELS, fixtureDir, loadExpected, maxAbs, maxDiffAtTokens } from "./helpers/fixtures.ts";

/**
 * The transformer against the float64 PyTorch reference of scripts/make_fixtures.py, on every
 * device. Tolerance: max |logit error| <= 1e-4 x max |logit| (the bound) on cpu, wasm and
 * webgpu: both compute in f32, and f32 through two layers of width 32-64 accumulates ~1e-6
 * relative error (measured: 2e-7 to 7e-8 of the logit scale on cpu), far inside it; the
 * webgpu kernels sum in other orders and use WGSL's exp/tanh (a few ulp), which moves that by a
 * few times, not by the factor 100 of headroom. A wrong rule (rope layout, mask, bias, tie)
 * errs by O(1).
 */
const cpu = qa.cpuDevice();

async function checkGolden(name: string, device: qa.Backend): Promise<void> {
    const exp = await loadExpected(name);
    const model = await loadModel(fixtureDir(name), { device });
    const ids = qa.tensor(Int32Array.from(exp.inputIds.flat()), { device, shape: [exp.B, exp.T] });
    const out = qa.noGrad(() => model.forward(ids, { attentionMask: exp.attentionMask, outputHiddenStates: true }));
    const logits = await out.logits!.data();
    const scale = maxAbs(exp.logits);
    expect(maxDiffAtTokens(logits, exp.logits, exp.attentionMask, exp.V)).toBeLessThanOrEqual(1e-4 * scale);
    expect(out.hiddenStates).toHaveLength(exp.L + 1);
    const per = exp.B * exp.T * exp.D;
    for (let l = 0; l <= exp.L; l++) {
      const h = await out.hiddenStates![l]!.data();
      const ref = exp.residual.subarray(l * per, (l + 1) * per);
      expect(maxDiffAtTokens(h, ref, exp.attentionMask, exp.D), `layer ${l}`).toBeLessThanOrEqual(1e-4 * maxAbs(ref));
    }
    model.dispose();
}

describe.each(FIXTURE_MODELS)("%s", (name) => {
  test("cpu: logits and every layer's residual stream match the reference at real tokens", () => checkGolden(name, cpu));
  testDevices("logits and every layer's residual stream match the reference at real tokens", (device) => checkGolden(name, device));

  test("cpu: KV-cache decoding, one token at a time, equals the full forward", () => checkCache(name, cpu));
  testDevices("KV-cache decoding, one token at a time, equals the full forward", (device) => checkCache(name, device));
});

/** Prefill 3 tokens, then decode one at a time through the KV cache; compare with one full forward. */
async function checkCache(name: string, device: qa.Backend): Promise<void> {
  const exp = await loadExpected(name);
  const model = await loadModel(fixtureDir(name), { device });
  const row = exp.inputIds[0]!;
  const ids = (xs: number[]) => qa.tensor(Int32Array.from(xs), { device, shape: [1, xs.length] });
  const full = await qa.noGrad(() => model.forward(ids(row)).logits!).data();
  const cache = model.newCache(1);
  const prefill = 3;
  const steps: number[] = [];
  for (let t = 0; t < row.length; t = t === 0 ? prefill : t + 1) {
    const chunk = row.slice(t, t === 0 ? prefill : t + 1);
    steps.push(...(await qa.noGrad(() => model.forward(ids(chunk), { cache }).logits!).data()));
  }
  expect(steps.length).toBe(full.length);
  expect(maxDiffAtTokens(steps, full, [row.map(() => 1)], exp.V)).toBeLessThanOrEqual(1e-5 * maxAbs(full));
  cache.dispose();
  model.dispose();
}
