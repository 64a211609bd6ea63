/**
 * Principal component analysis with qalign's own tensor ops.
 *
 * Method: power iteration with deflation (Hotelling 1933; Golub & Van Loan, Matrix
 * Computations, 4th ed., section 8.2). For data X [N, D] with column means mu, the sample
 * covariance is C = Xc^T Xc / (N - 1), Xc = X - mu. Component i is the fixed point of
 *   v <- C v / |C v|,
 * started from a random vector; the error shrinks by lambda_{i+1} / lambda_i per step. After
 * each step the components already found are projected out of the new vector
 * (w <- w - U U^T w, "projection deflation"), so later components converge to the next
 * eigenvectors and stay orthogonal to the earlier ones to rounding.
 *
 * Why this and not a Jacobi eigen-solver on C: a model's hidden size D is 2,048-8,192, and
 * Jacobi costs O(D^3) per sweep (~7e10 multiply-adds for D = 4096) in memory O(D^2), while we
 * want 2-10 components. Power iteration never forms C: C v = Xc^T (Xc v) / (N - 1) is two
 * matrix-vector products, O(N D) each, with qalign's `matmul` (a transposed view, no copy).
 * The price is slow convergence when two eigenvalues nearly coincide; each component reports
 * its iteration count and whether it converged.
 */
import { ShapeError, DTypeError, fmt } from "../tensor/errors.ts";
import { randn } from "../tensor/ops/create.ts";
import { Rng } from "../tensor/random.ts";
import { keep, tidy } from "../tensor/scope.ts";
import { concat } from "../tensor/ops/views.ts";
import type { Tensor } from "../tensor/tensor.ts";

/** How many components {@link pca} finds, and when power iteration stops. */
export interface PcaOptions {
  /** How many components k to find (default 2); at most min(N - 1, D), the rank of Xc. */
  components?: number;
  /** Power-iteration steps per component before giving up (default 1000). */
  maxIterations?: number;
  /**
   * Convergence threshold on the change of a unit component between steps, signs aside:
   * min(|v' - v|, |v' + v|) (default 1e-9 for f64, 1e-5 for f32).
   */
  tolerance?: number;
  /** Seed of the random start vectors (default 0). */
  seed?: number;
}

/** Principal components of a data matrix; see {@link pca}. */
export interface PcaResult {
  /** Column means mu [D] that were subtracted. */
  mean: Float64Array;
  /**
   * k principal axes, each a unit vector [D], by decreasing variance. A component's sign is
   * arbitrary; it is fixed so that its largest-magnitude entry is positive (as sklearn does).
   */
  components: Float64Array[];
  /** Eigenvalues lambda_i = v_i^T C v_i: the variance along each axis, in squared data units. */
  variances: number[];
  /** lambda_i / trace(C): the fraction of the total variance along each axis, in [0, 1]. */
  explainedVarianceRatio: number[];
  /** trace(C) = sum of the column variances, in squared data units. */
  totalVariance: number;
  /** Xc V [N, k], row-major: each row's coordinates on the components, in data units. */
  projections: Float64Array;
  /** Power-iteration steps each component took. */
  iterations: number[];
  /** Whether each component met the tolerance within maxIterations. */
  converged: boolean[];
}

/**
 * The top principal components of the rows of `x`, computed on x's device in x's dtype (use
 * f64 on the cpu device for reference precision). Returns fewer than k components when the
 * centred data has lower rank (the remaining variance is zero to rounding), and none when all
 * rows are equal (e.g. the embeddings of one shared last token).
 * @param x float [N, D]: N observations (rows) of D variables
 * @throws ShapeError when x is not 2-D or has fewer than 2 rows; DTypeError when x is not float;
 *   RangeError when `components` is not a positive integer.
 */
export async function pca(x: Tensor, opts: PcaOptions = {}): Promise<PcaResult> {
  if (x.rank !== 2 || x.shape[0]! < 2) throw new ShapeError("pca", `needs [N >= 2, D] data, got ${fmt(x.shape)}`);
  if (x.dtype === "i32") throw new DTypeError("pca", "needs float data, got i32");
  const [N, D] = x.shape as [number, number];
  const wanted = opts.components ?? 2;
  if (!Number.isInteger(wanted) || wanted < 1) throw new RangeError(`pca: components must be a positive integer, got ${wanted}`);
  const k = Math.min(wanted, N - 1, D);
  const maxIterations = opts.maxIterations ?? 1000;
  const tolerance = opts.tolerance ?? (x.dtype === "f64" ? 1e-9 : 1e-5);
  const rng = new Rng(opts.seed ?? 0);

  // Inputs from a graph are detached: nothing here needs gradients.
  const data = x.detach();
  const { mu, xc, total } = tidy(() => {
    const mu = data.mean(0, true); // [1, D]
    const xc = data.sub(mu); // [N, D]
    return { mu, xc, total: xc.square().sum().div(N - 1) }; // trace(C) = sum_ij Xc_ij^2 / (N - 1)
  });
  const found: Tensor[] = []; // unit columns [D, 1]
  const iterations: number[] = [];
  const converged: boolean[] = [];
  try {
    const totalVariance = await total.item();
    for (let i = 0; i < k; i++) {
      const u = found.length ? keep(concat(found, 1)) : null; // [D, i]
      // w - U (U^T w): w [D, 1] with the components found so far projected out.
      const deflate = (w: Tensor): Tensor => (u ? w.sub(u.matmul(u.transpose().matmul(w))) : w);
      let v = keep(tidy(() => normalise(deflate(randn([D, 1], { rng, device: data.backend, dtype: data.dtype })))));
      let step = 0;
      let done = false;
      let vanished = false;
      while (step < maxIterations && !done) {
        step++;
        const next = tidy(() => {
          // w = C v = Xc^T (Xc v) / (N - 1), deflated.
          const w = deflate(xc.transpose().matmul(xc.matmul(v)).div(N - 1));
          const norm = w.square().sum().sqrt();
          const unit = w.div(norm);
          // |v' - v| and |v' + v| directly: via 2 - 2 |v'.v| they would cancel below sqrt(eps).
          const change = (t: Tensor) => t.square().sum().sqrt().reshape([1]);
          return { unit, read: concat([norm.reshape([1]), change(unit.sub(v)), change(unit.add(v))], 0) };
        });
        const [norm, minus, plus] = Array.from(await next.read.data()) as [number, number, number];
        next.read.dispose();
        // |C v| = lambda for an eigenvector: at the rounding level of the total, nothing is left.
        if (!(norm > 1e-12 * totalVariance)) {
          next.unit.dispose();
          vanished = true;
          break;
        }
        v.dispose();
        v = keep(next.unit);
        done = Math.min(minus, plus) < tolerance;
      }
      u?.dispose();
      if (vanished) {
        v.dispose();
        break;
      }
      found.push(v);
      iterations.push(step);
      converged.push(done);
    }

    // Rayleigh quotients lambda_i = v^T C v = |Xc v|^2 / (N - 1), and projections Xc V [N, k].
    let variances: number[] = [];
    let projections = new Float64Array(0);
    if (found.length) {
      const { proj, lambdas } = tidy(() => {
        const proj = xc.matmul(concat(found, 1));
        return { proj, lambdas: proj.square().sum(0).div(N - 1) };
      });
      variances = Array.from(await lambdas.data());
      projections = Float64Array.from(await proj.data());
      proj.dispose();
      lambdas.dispose();
    }
    const components: Float64Array[] = [];
    for (const [i, v] of found.entries()) {
      const c = Float64Array.from(await v.data());
      let big = 0;
      for (let d = 1; d < D; d++) if (Math.abs(c[d]!) > Math.abs(c[big]!)) big = d;
      if (c[big]! < 0) {
        c.forEach((e, d) => (c[d] = -e));
        for (let n = 0; n < N; n++) projections[n * found.length + i] = -projections[n * found.length + i]!;
      }
      components.push(c);
    }
    return {
      mean: Float64Array.from(await mu.data()),
      components,
      variances,
      explainedVarianceRatio: variances.map((l) => l / totalVariance),
      totalVariance,
      projections,
      iterations,
      converged,
    };
  } finally {
    for (const t of [data, mu, xc, total, ...found]) t.dispose();
  }
}

/** v / |v| for a column [D, 1]. */
function normalise(v: Tensor): Tensor {
  return v.div(v.square().sum().sqrt());
}
