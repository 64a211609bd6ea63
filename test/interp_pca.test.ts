import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { pca } from "../src/interp/pca.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import { tensor } from "../src/tensor/ops/create.ts";
import { Rng } from "../src/tensor/random.ts";

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((s, x, i) => s + x * b[i]!, 0);

/** Gram-Schmidt on the columns of a row-major [R, C] matrix, in place (twice, for rounding). */
function orthonormaliseColumns(m: Float64Array, R: number, C: number): void {
  const col = (j: number) => Float64Array.from({ length: R }, (_, r) => m[r * C + j]!);
  for (let pass = 0; pass < 2; pass++) {
    for (let j = 0; j < C; j++) {
      const v = col(j);
      for (let i = 0; i < j; i++) {
        const u = col(i);
        const p = dot(u, v);
        for (let r = 0; r < R; r++) v[r] = v[r]! - p * u[r]!;
      }
      const n = Math.sqrt(dot(v, v));
      for (let r = 0; r < R; r++) m[r * C + j] = v[r]! / n;
    }
  }
}

/**
 * Data with an exactly known sample covariance: X = sqrt(N - 1) Z diag(sigma) Q^T + mu, where
 * Z [N, D] has centred orthonormal columns (so Z^T Z = I and column means 0) and Q [D, D] is a
 * random orthonormal basis. Then C = X_c^T X_c / (N - 1) = Q diag(sigma^2) Q^T: the principal
 * axes are Q's columns, the variances sigma^2, the explained ratios sigma_i^2 / sum sigma^2.
 */
function knownData(N: number, sigma: number[], seed: number) {
  const D = sigma.length;
  const rng = new Rng(seed);
  const z = Float64Array.from({ length: N * D }, () => rng.normal());
  for (let j = 0; j < D; j++) {
    let m = 0;
    for (let n = 0; n < N; n++) m += z[n * D + j]! / N;
    for (let n = 0; n < N; n++) z[n * D + j] = z[n * D + j]! - m;
  }
  orthonormaliseColumns(z, N, D);
  const q = Float64Array.from({ length: D * D }, () => rng.normal());
  orthonormaliseColumns(q, D, D);
  const mu = Array.from({ length: D }, () => 5 * rng.normal());
  const x = new Float64Array(N * D);
  for (let n = 0; n < N; n++) {
    for (let d = 0; d < D; d++) {
      let s = mu[d]!;
      for (let j = 0; j < D; j++) s += Math.sqrt(N - 1) * z[n * D + j]! * sigma[j]! * q[d * D + j]!;
      x[n * D + d] = s;
    }
  }
  const axes = sigma.map((_, j) => Float64Array.from({ length: D }, (_, d) => q[d * D + j]!));
  return { x: tensor(x, { device: cpuDevice(), shape: [N, D] }), axes, mu };
}

/**
 * Tolerances: float64 throughout on data built with known axes and variances. With the power
 * iteration run to 1e-12, axes agree to 1e-10, variances (up to 16) to 8 digits, ratios, mean
 * and uncorrelated projections to 9; orthonormality on any data to 1e-9, and ratios sum to at
 * most 1 + 1e-9 (float64 rounding of a sum of at most 12 terms).
 */

describe("pca", () => {
  it("recovers known principal axes, variances and explained-variance ratios", async () => {
    const sigma = [4, 3, 2, 1, 0.5, 0.25];
    const { x, axes, mu } = knownData(40, sigma, 7);
    // A tight tolerance: the error left in a component is about tolerance / (1 - lambda_{i+1} / lambda_i).
    const r = await pca(x, { components: 4, tolerance: 1e-12 });
    const total = sigma.reduce((s, v) => s + v * v, 0);
    expect(r.totalVariance).toBeCloseTo(total, 9);
    expect(r.converged).toEqual([true, true, true, true]);
    for (let i = 0; i < 4; i++) {
      // Same axis, sign aside: |v - s q| with s = sign(v . q).
      const v = r.components[i]!;
      const s = Math.sign(dot(v, axes[i]!));
      expect(Math.hypot(...Array.from(v, (e, d) => e - s * axes[i]![d]!))).toBeLessThan(1e-10);
      expect(r.variances[i]).toBeCloseTo(sigma[i]! ** 2, 8);
      expect(r.explainedVarianceRatio[i]).toBeCloseTo(sigma[i]! ** 2 / total, 9);
    }
    Array.from(r.mean).forEach((m, d) => expect(m).toBeCloseTo(mu[d]!, 9));
    // Projections: each column has variance lambda_i and they are uncorrelated.
    const col = (i: number) => Array.from({ length: 40 }, (_, n) => r.projections[n * 4 + i]!);
    expect(dot(col(0), col(0)) / 39).toBeCloseTo(16, 8);
    expect(dot(col(0), col(1)) / 39).toBeCloseTo(0, 9);
    x.dispose();
  });

  it("fixes each component's sign so that its largest entry is positive", async () => {
    const { x } = knownData(12, [3, 1, 0.5], 3);
    const r = await pca(x, { components: 2 });
    for (const c of r.components) {
      const big = Array.from(c).reduce((b, v, d) => (Math.abs(v) > Math.abs(c[b]!) ? d : b), 0);
      expect(c[big]).toBeGreaterThan(0);
    }
    x.dispose();
  });

  it("returns only as many components as the centred data has rank", async () => {
    // Three points span a plane: rank 2, whatever D is.
    const x = tensor([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0]], { device: cpuDevice(), dtype: "f64" });
    const r = await pca(x, { components: 4 });
    expect(r.components.length).toBe(2);
    expect(r.explainedVarianceRatio.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
    x.dispose();
  });

  it("returns no component when all rows are equal", async () => {
    const x = tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3]], { device: cpuDevice(), dtype: "f64" });
    const r = await pca(x, { components: 2 });
    expect(r.components).toEqual([]);
    expect(r.totalVariance).toBe(0);
    expect(r.projections.length).toBe(0);
    x.dispose();
  });

  it("gives orthonormal components with ratios that sum to at most 1, on any data", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 3, max: 12 }), fc.integer({ min: 2, max: 6 }), fc.integer(), async (N, D, seed) => {
        const rng = new Rng(seed);
        // Unequal column scales keep the eigenvalues apart, as in hidden states.
        const x = tensor(
          Float64Array.from({ length: N * D }, (_, i) => rng.normal() * (1 + (i % D))),
          { device: cpuDevice(), shape: [N, D] },
        );
        const r = await pca(x, { components: D, maxIterations: 300 });
        x.dispose();
        for (const [i, a] of r.components.entries()) {
          for (const [j, b] of r.components.entries()) expect(Math.abs(dot(a, b) - (i === j ? 1 : 0))).toBeLessThan(1e-9);
        }
        expect(r.explainedVarianceRatio.reduce((s, v) => s + v, 0)).toBeLessThanOrEqual(1 + 1e-9);
      }),
      { numRuns: 40, seed: 1 },
    );
  });
});
