import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { Rng } from "../src/tensor/random.ts";
import { argmaxWithTies, prefixMasses } from "../src/eval/decode.ts";
import { logSumExp } from "../src/tensor/logsumexp.ts";
import { accuracyOf, confusionMatrix, macroAverage, wilsonInterval, Z95 } from "../src/eval/metrics.ts";

/**
 * Tolerances: closed forms in float64 agree to their rounding (9-15 digits, fewer where more
 * operations or a large value, 1000 + ln 2, are involved); the hand-built logits are f32
 * (relative error 6e-8), so masses are compared to 6 digits; tabulated values are given to 7.
 */

describe("constrained decoding on a hand-built distribution", () => {
  // V = 6 tokens; logits chosen so that softmax is [0.1, 0.2, 0.3, 0.05, 0.25, 0.1].
  const probs = [0.1, 0.2, 0.3, 0.05, 0.25, 0.1];
  const logits = Float32Array.from(probs, (p) => Math.log(p) + 3); // any shift: softmax is shift-invariant

  it("sums the probability of each class's token set and picks the largest", () => {
    // class 0 owns tokens {0, 3} (0.15), class 1 {1, 5} (0.3), class 2 {4} (0.25): class 1 wins,
    // although token 2 (0.3, in no set) is the single most likely token.
    const masses = prefixMasses(logits, 0, 6, [[0, 3], [1, 5], [4]]);
    expect(masses[0]).toBeCloseTo(0.15, 6);
    expect(masses[1]).toBeCloseTo(0.3, 6);
    expect(masses[2]).toBeCloseTo(0.25, 6);
    expect(argmaxWithTies(masses, new Rng(0))).toEqual({ pred: 1, tie: false });
  });

  it("reads a row at an offset of a [B, V] array", () => {
    const two = new Float32Array(12);
    two.set(logits, 6);
    expect(prefixMasses(two, 6, 6, [[2]])[0]).toBeCloseTo(0.3, 6);
  });

  it("counts exact ties and breaks them with the seeded generator", () => {
    const seen = new Set<number>();
    for (let seed = 0; seed < 20; seed++) {
      const r = argmaxWithTies([0.4, 0.1, 0.4], new Rng(seed));
      expect(r.tie).toBe(true);
      expect([0, 2]).toContain(r.pred);
      seen.add(r.pred);
    }
    expect(seen).toEqual(new Set([0, 2]));
    expect(argmaxWithTies([0.4, 0.1, 0.4], new Rng(3))).toEqual(argmaxWithTies([0.4, 0.1, 0.4], new Rng(3)));
  });

  it("logSumExp is stable for large logits", () => {
    expect(logSumExp([1000, 1000], 0, 2)).toBeCloseTo(1000 + Math.log(2), 9);
    expect(logSumExp([-Infinity, -Infinity], 0, 2)).toBe(-Infinity);
  });
});

describe("accuracy and Wilson intervals", () => {
  it("matches the closed form at hand-computed points", () => {
    // k = 0, n = 10: center = (z^2/20) / (1 + z^2/10), half the same, so low = 0 and
    // high = (z^2/10) / (1 + z^2/10) = 0.27753...
    const z2 = Z95 * Z95;
    const w0 = wilsonInterval(0, 10);
    expect(w0.low).toBe(0);
    expect(w0.high).toBeCloseTo(z2 / 10 / (1 + z2 / 10), 12);
    expect(w0.high).toBeCloseTo(0.2775327, 6);
    // k = n / 2: symmetric about 1/2, half width z / (1 + z^2/n) * sqrt(1/(4n) + z^2/(4n^2)).
    const n = 100;
    const w = wilsonInterval(50, n);
    const half = (Z95 / (1 + z2 / n)) * Math.sqrt(0.25 / n + z2 / (4 * n * n));
    expect(w.low).toBeCloseTo(0.5 - half, 12);
    expect(w.high).toBeCloseTo(0.5 + half, 12);
    expect(w.low).toBeCloseTo(0.4038315, 6); // the tabulated value for 50/100
  });

  it("holds the estimate, stays in [0, 1], is symmetric under k -> n - k and narrows with n", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 5000 }), fc.double({ min: 0, max: 1, noNaN: true }), (n, f) => {
        const k = Math.round(f * n);
        const w = wilsonInterval(k, n);
        const m = wilsonInterval(n - k, n);
        const p = k / n;
        expect(w.low).toBeGreaterThanOrEqual(0);
        expect(w.high).toBeLessThanOrEqual(1);
        expect(w.low).toBeLessThanOrEqual(p + 1e-12);
        expect(w.high).toBeGreaterThanOrEqual(p - 1e-12);
        expect(m.low).toBeCloseTo(1 - w.high, 10);
        const w4 = wilsonInterval(4 * k, 4 * n);
        expect(w4.high - w4.low).toBeLessThan(w.high - w.low + 1e-12);
      }),
    );
  });

  it("rejects impossible counts and knows nothing at n = 0", () => {
    expect(() => wilsonInterval(3, 2)).toThrow(RangeError);
    expect(() => wilsonInterval(1.5, 4)).toThrow(RangeError);
    expect(wilsonInterval(0, 0)).toEqual({ low: 0, high: 1 });
  });

  it("accuracy, confusion matrix and the mean over languages", () => {
    const truth = [0, 0, 1, 1, 2, 2, 2];
    const pred = [0, 1, 1, 1, 2, 0, 2];
    const a = accuracyOf(truth.map((t, i) => t === pred[i]));
    expect(a).toMatchObject({ n: 7, correct: 5 });
    expect(a.accuracy).toBeCloseTo(5 / 7, 15);
    expect(a.ci95).toEqual(wilsonInterval(5, 7));
    expect(confusionMatrix(truth, pred, 3)).toEqual([
      [1, 1, 0],
      [0, 2, 0],
      [1, 0, 2],
    ]);
    expect(() => confusionMatrix([0, 3], [0, 0], 3)).toThrow(RangeError);
    expect(macroAverage([0.5, 0.7, 0.9])).toBeCloseTo(0.7, 15);
    expect(macroAverage([])).toBeNaN();
  });
});
