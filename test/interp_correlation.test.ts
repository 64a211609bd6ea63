import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { correlationByLayer, pearson } from "../src/interp/correlation.ts";

/**
 * Tolerances: pearson in float64 on exact linear relations; inputs up to 100 with offsets up to
 * 50 cost a few digits in the centring, so 9 digits for the property, 12 on the hand-made
 * vectors and for the symmetry (the same sums in another order).
 */

describe("pearson", () => {
  it("is cos(theta) for u cos(theta) + w sin(theta) against u, with u, w centred and orthonormal", () => {
    // u and w: centred (sum 0), unit length, orthogonal; so cov(u, b) / (sd u sd b) = cos(theta).
    const u = [1, -1, 1, -1].map((x) => x / 2);
    const w = [1, 1, -1, -1].map((x) => x / 2);
    for (const theta of [0, 0.3, 1, Math.PI / 2, 2.5, Math.PI]) {
      const b = u.map((x, i) => x * Math.cos(theta) + w[i]! * Math.sin(theta) + 7); // an offset changes nothing
      expect(pearson(u, b)).toBeCloseTo(Math.cos(theta), 12);
    }
  });

  it("is sign(alpha) for b = alpha a + beta, and symmetric", () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: -100, max: 100, noNaN: true }), { minLength: 2, maxLength: 30 }),
        fc.double({ min: 0.01, max: 10, noNaN: true }),
        fc.boolean(),
        fc.double({ min: -50, max: 50, noNaN: true }),
        (a, scale, negative, beta) => {
          fc.pre(Math.max(...a) - Math.min(...a) > 1e-3);
          const alpha = negative ? -scale : scale;
          const b = a.map((x) => alpha * x + beta);
          expect(pearson(a, b)).toBeCloseTo(Math.sign(alpha), 9);
          expect(pearson(b, a)).toBeCloseTo(pearson(a, b), 12);
        },
      ),
      { seed: 2 },
    );
  });

  it("is NaN for a constant vector and rejects unequal lengths", () => {
    expect(pearson([1, 1, 1], [1, 2, 3])).toBeNaN();
    expect(() => pearson([1, 2], [1, 2, 3])).toThrow(RangeError);
  });
});

describe("correlationByLayer", () => {
  it("compares every language with the reference at every layer", () => {
    const en = [[1, 2, 3], [0, 1, 0]];
    const means = new Map([
      ["en", en],
      ["de", [[2, 4, 6], [0, -1, 0]]],
    ]);
    expect(correlationByLayer(means)).toEqual([
      { lang: "de", layer: 0, r: 1 },
      { lang: "de", layer: 1, r: -1 },
    ]);
    expect(() => correlationByLayer(new Map([["de", en]]))).toThrow(/reference language "en"/);
  });
});
