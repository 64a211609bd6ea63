import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import { FIXTURE_MODELS, fixtureDir, loadExpected, maxAbs, maxDiffAtTokens } from "./helpers/fixtures.ts";

/**
 * The transformer against the float64 PyTorch reference of scripts/make_fixtures.py, on the
 * cpu device. Tolerance: max |logit error| <= 1e-4 x max |logit| (the bound). f32
 * arithmetic through two layers of width 32-64 accumulates ~1e-6 relative error, far inside it;
 * a wrong rule (rope layout, mask, bias, tie) errs by O(1).
 */
const cpu = qa.cpuDevice();

describe.each(FIXTURE_MODELS)("%s on cpu", (name) => {
  test("logits and every layer's residual stream match the reference at real tokens", async () => {
    const exp = await loadExpected(name);
    const model = await loadModel(fixtureDir(name), { device: cpu });
    const ids = qa.tensor(Int32Array.from(exp.inputIds.flat()), { device: cpu, shape: [exp.B, exp.T] });
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
  });

  test("KV-cache decoding, one token at a time, equals the full forward", async () => {
    const exp = await loadExpected(name);
    const model = await loadModel(fixtureDir(name), { device: cpu });
    const row = exp.inputIds[0]!;
    const full = await qa
      .noGrad(() => model.forward(qa.tensor(Int32Array.from(row), { device: cpu, shape: [1, row.length] })).logits!)
      .data();
    const cache = model.newCache(1);
    const prefill = 3;
    const steps: number[] = [];
    for (let t = 0; t < row.length; t = t === 0 ? prefill : t + 1) {
      const chunk = row.slice(t, t === 0 ? prefill : t + 1);
      const l = qa.noGrad(() => model.forward(qa.tensor(Int32Array.from(chunk), { device: cpu, shape: [1, chunk.length] }), { cache }).logits!);
      steps.push(...(await l.data()));
    }
    expect(steps.length).toBe(full.length);
    expect(maxDiffAtTokens(steps, full, [row.map(() => 1)], exp.V)).toBeLessThanOrEqual(1e-5 * maxAbs(full));
  });
});
