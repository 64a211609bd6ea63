import * as qa from "../../src/index.ts";
import { expectClose } from "./close.ts";

/**
 * Finite-difference gradient check in float64 on the cpu device.
 *
 * For a function f of some input tensors, compares the autograd gradient of
 * L = sum(f(inputs) * R), with R a fixed random tensor (so every output element matters with
 * its own weight), against central differences (L(x + h e_i) - L(x - h e_i)) / 2h.
 * In float64 with h = 1e-6 the truncation error is O(h^2 f''') ~ 1e-12 and the rounding error
 * O(eps_64 |L| / h) ~ 1e-10 |L|, so a tolerance of 1e-6 (absolute + relative) is generous
 * yet catches any wrong rule (which errs by O(1)).
 */
export async function gradcheck(
  f: (...xs: qa.Tensor[]) => qa.Tensor,
  inputs: Float64Array[],
  shapes: number[][],
  opts: { seed?: number; h?: number; tol?: number; wrt?: number[] } = {},
): Promise<void> {
  const device = qa.cpuDevice();
  const h = opts.h ?? 1e-6;
  const tol = opts.tol ?? 1e-6;
  const wrt = opts.wrt ?? inputs.map((_, i) => i);
  const make = (data: Float64Array[], grad: boolean) =>
    data.map((d, i) => qa.tensor(d, { device, shape: shapes[i], requiresGrad: grad && wrt.includes(i) }));

  const y0 = qa.noGrad(() => f(...make(inputs, false)));
  const R = qa.randn(y0.shape, { device, dtype: "f64", seed: opts.seed ?? 7 });
  const loss = (data: Float64Array[]): Promise<number> => qa.tidy(() => qa.noGrad(() => f(...make(data, false)).mul(R).sum())).item();

  const xs = make(inputs, true);
  f(...xs).mul(R).sum().backward();
  for (const i of wrt) {
    const analytic = xs[i]!.grad ? ((await xs[i]!.grad!.data()) as Float64Array) : new Float64Array(inputs[i]!.length);
    const numeric = new Float64Array(inputs[i]!.length);
    for (let e = 0; e < numeric.length; e++) {
      const plus = inputs.map((d) => d.slice());
      const minus = inputs.map((d) => d.slice());
      plus[i]![e]! += h;
      minus[i]![e]! -= h;
      numeric[e] = ((await loss(plus)) - (await loss(minus))) / (2 * h);
    }
    expectClose(analytic, numeric, tol, `gradient of input ${i}`);
  }
}

/** A seeded Float64Array of normal samples, optionally shifted into a domain. */
export function randomData(n: number, seed: number, map: (x: number) => number = (x) => x): Float64Array {
  const rng = new qa.Rng(seed);
  return Float64Array.from({ length: n }, () => map(rng.normal()));
}
