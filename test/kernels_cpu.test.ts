import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { Storage, View } from "../src/tensor/backend.ts";
import { matmulOp } from "../src/tensor/ops/matmul.ts";
import type { AttentionGeometry } from "../src/tensor/ops/attention.ts";
import { attentionBackwardOp, attentionOp } from "../src/tensor/ops/attention.ts";
import { crossEntropyBackwardOp, crossEntropyOp } from "../src/tensor/ops/cross_entropy.ts";
import { gatherOp, scatterAddOp } from "../src/tensor/ops/embedding.ts";
import { rmsNormOp } from "../src/tensor/ops/rmsnorm.ts";
import { ropeOp } from "../src/tensor/ops/rope.ts";
import { softmaxOp } from "../src/tensor/ops/softmax.ts";
import { reduceRowsOp } from "../src/tensor/ops/reduce.ts";
import { adamwOp } from "../src/tensor/optim.ts";
import { deviceOp } from "../src/tensor/backend.ts";
import { DTypeError, DeviceError, DisposedError, ShapeError } from "../src/tensor/errors.ts";
import { contiguousStrides, numel } from "../src/tensor/shape.ts";
import { CpuBackend, CpuStorage } from "../src/kernels/cpu.ts";
import { registerKernel } from "../src/kernels/registry.ts";
import { expectClose } from "./helpers/close.ts";
import { random } from "./helpers/random.ts";

/**
 * The CPU references checked against independent closed forms and naive formulas written here in
 * float64. Tolerances: results that are the same math in another order agree to ~1e-12 (a few
 * hundred ulps of double rounding at these sizes); finite differences are compared at 1e-6
 * (central differences with h = 1e-6 have truncation error ~h^2 and rounding error ~1e-16 / h,
 * both well below it). Random shapes come from fast-check with fixed seeds, so runs are
 * reproducible and shrink to a small failing shape.
 */

const cpu = new CpuBackend();
const RUNS = { seed: 20240611, numRuns: 40 };
const TIGHT = 1e-12;
const FD = 1e-6;

function randomArray(rand: () => number, n: number, scale = 1): Float64Array {
  return Float64Array.from({ length: n }, () => rand() * scale);
}

/** A float64 copy of the storage's elements (tests may look inside the cpu storage directly). */
function values(s: Storage): Float64Array {
  return Float64Array.from((s as CpuStorage).data);
}

function f64(data: ArrayLike<number>): Storage {
  return cpu.upload(Float64Array.from(data));
}

function i32(data: ArrayLike<number>): Storage {
  return cpu.upload(Int32Array.from(data));
}

function contiguous(storage: Storage, shape: number[]): View {
  return { storage, shape, strides: contiguousStrides(shape), offset: 0 };
}

/** Row-major multi-index of linear index i in shape. */
function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let a = shape.length - 1; a >= 0; a--) {
    idx[a] = i % shape[a]!;
    i = Math.floor(i / shape[a]!);
  }
  return idx;
}

function stridedAt(idx: number[], strides: readonly number[], offset: number): number {
  return idx.reduce((acc, x, a) => acc + x * strides[a]!, offset);
}

const shapeArb = (maxRank: number, maxDim: number) => fc.array(fc.integer({ min: 1, max: maxDim }), { maxLength: maxRank });

describe("elementwise over strided views", () => {
  it("unary copy reads any strided view (rank 0-4, stride 0, offsets) in row-major order", () => {
    fc.assert(
      fc.property(
        shapeArb(4, 4).chain((shape) =>
          fc.record({
            shape: fc.constant(shape),
            strides: fc.array(fc.integer({ min: 0, max: 6 }), { minLength: shape.length, maxLength: shape.length }),
            offset: fc.integer({ min: 0, max: 5 }),
          }),
        ),
        ({ shape, strides, offset }) => {
          const size = shape.reduce((acc, d, a) => acc + (d - 1) * strides[a]!, offset) + 1;
          const storage = f64(Array.from({ length: size }, (_, i) => i * 0.5));
          const out = cpu.unary("copy", { storage, shape, strides, offset });
          const expected = Array.from({ length: numel(shape) }, (_, i) => stridedAt(unravel(i, shape), strides, offset) * 0.5);
          expectClose(values(out), expected, 0);
        },
      ),
      RUNS,
    );
  });

  it("a size-0 axis gives an empty output", () => {
    const out = cpu.unary("exp", { storage: f64([1]), shape: [3, 0], strides: [0, 1], offset: 0 });
    expect(out.numel).toBe(0);
  });

  const closedForms: Record<"add" | "sub" | "mul" | "div" | "maximum" | "lt", (a: number, b: number) => number> = {
    add: (a, b) => a + b,
    sub: (a, b) => a - b,
    mul: (a, b) => a * b,
    div: (a, b) => a / b,
    maximum: (a, b) => (a > b ? a : b),
    lt: (a, b) => Number(a < b),
  };

  it("binary ops broadcast by stride 0", () => {
    fc.assert(
      fc.property(
        shapeArb(4, 4).chain((shape) =>
          fc.record({
            shape: fc.constant(shape),
            bcastA: fc.array(fc.boolean(), { minLength: shape.length, maxLength: shape.length }),
            bcastB: fc.array(fc.boolean(), { minLength: shape.length, maxLength: shape.length }),
            op: fc.constantFrom(...(Object.keys(closedForms) as (keyof typeof closedForms)[])),
            seed: fc.integer(),
          }),
        ),
        ({ shape, bcastA, bcastB, op, seed }) => {
          const rand = random(seed);
          // An input of shape `shape` with 1 on the broadcast axes, viewed at the full shape with stride 0 there.
          const input = (bcast: boolean[]) => {
            const own = shape.map((d, a) => (bcast[a] ? 1 : d));
            const data = randomArray(rand, numel(own));
            const strides = contiguousStrides(own).map((s, a) => (bcast[a] ? 0 : s));
            return { data, own, view: { storage: f64(data), shape, strides, offset: 0 } };
          };
          const a = input(bcastA);
          const b = input(bcastB);
          const out = cpu.binary(op, a.view, b.view);
          const expected = Array.from({ length: numel(shape) }, (_, i) => {
            const idx = unravel(i, shape);
            const at = (x: { own: number[]; data: Float64Array }) =>
              x.data[stridedAt(idx.map((v, ax) => (x.own[ax] === 1 ? 0 : v)), contiguousStrides(x.own), 0)]!;
            return closedForms[op](at(a), at(b));
          });
          expectClose(values(out), expected, TIGHT, op);
        },
      ),
      RUNS,
    );
  });

  it("i32 supports integer arithmetic and comparisons, returning i32", () => {
    const a = contiguous(i32([-3, 0, 7, 2]), [4]);
    const b = contiguous(i32([2, 0, -7, 5]), [4]);
    const cases = { add: [-1, 0, 0, 7], sub: [-5, 0, 14, -3], mul: [-6, 0, -49, 10], maximum: [2, 0, 7, 5], eq: [0, 1, 0, 0], ge: [0, 1, 1, 0] };
    for (const [op, expected] of Object.entries(cases)) {
      const out = cpu.binary(op as keyof typeof cases, a, b);
      expect(out.dtype, op).toBe("i32");
      expect(Array.from(values(out)), op).toEqual(expected);
    }
  });

  it("float-only ops on i32 and mixed dtypes throw DTypeError naming the op", () => {
    const a = contiguous(i32([1, 2]), [2]);
    expect(() => cpu.binary("div", a, a)).toThrow(DTypeError);
    expect(() => cpu.binary("div", a, a)).toThrow(/div/);
    expect(() => cpu.unary("exp", a)).toThrow(/exp/);
    expect(() => cpu.binary("add", a, contiguous(f64([1, 2]), [2]))).toThrow(DTypeError);
    expect(Array.from(values(cpu.unary("neg", a)))).toEqual([-1, -2]);
  });

  it("where picks a where cond != 0, with a broadcast condition", () => {
    const cond: View = { storage: f64([1, 0, 2]), shape: [2, 3], strides: [0, 1], offset: 0 };
    const out = cpu.where(cond, contiguous(f64([1, 2, 3, 4, 5, 6]), [2, 3]), contiguous(f64([-1, -2, -3, -4, -5, -6]), [2, 3]));
    expect(Array.from(values(out))).toEqual([1, -2, 3, 4, -5, 6]);
  });

  it("assign writes through a strided view, and overlapping views act as a copy", () => {
    const x = f64([0, 1, 2, 3, 4]);
    cpu.assign({ storage: x, shape: [4], strides: [1], offset: 1 }, { storage: x, shape: [4], strides: [1], offset: 0 });
    expect(Array.from(values(x))).toEqual([0, 0, 1, 2, 3]);
    const m = f64([0, 0, 0, 0, 0, 0]); // [2, 3], written through its transpose [3, 2]
    cpu.assign({ storage: m, shape: [3, 2], strides: [1, 3], offset: 0 }, contiguous(f64([1, 2, 3, 4, 5, 6]), [3, 2]));
    expect(Array.from(values(m))).toEqual([1, 3, 5, 2, 4, 6]);
  });

  it("cast to i32 truncates toward zero and saturates; i32 to float is exact", () => {
    const out = cpu.cast(contiguous(f64([-2.7, 2.7, -0.5, 3e10, -3e10, NaN]), [6]), "i32");
    expect(out.dtype).toBe("i32");
    expect(Array.from(values(out))).toEqual([-2, 2, 0, 2147483647, -2147483648, 0]);
    const back = cpu.cast(contiguous(i32([-5, 16777216]), [2]), "f32");
    expect(Array.from(values(back))).toEqual([-5, 16777216]);
  });

  it("a view reaching outside its storage throws ShapeError", () => {
    expect(() => cpu.unary("copy", { storage: f64([1, 2, 3]), shape: [2], strides: [2], offset: 1 })).toThrow(ShapeError);
  });
});

describe("reduceRows", () => {
  it("sum and max equal the naive row loop", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 9 }), fc.integer(), (rows, cols, seed) => {
        const x = randomArray(random(seed), rows * cols);
        const row = (r: number) => Array.from(x.subarray(r * cols, (r + 1) * cols));
        const sums = Array.from({ length: rows }, (_, r) => row(r).reduce((a, b) => a + b, 0));
        const maxes = Array.from({ length: rows }, (_, r) => Math.max(...row(r)));
        expectClose(values(cpu.run(reduceRowsOp, "sum", f64(x), rows, cols)), sums, TIGHT, "sum");
        expectClose(values(cpu.run(reduceRowsOp, "max", f64(x), rows, cols)), maxes, 0, "max");
      }),
      RUNS,
    );
  });
});

describe("matmul", () => {
  it("matches the naive triple loop for every transA / transB / batch-broadcast combination", () => {
    const dim = fc.integer({ min: 1, max: 7 });
    fc.assert(
      fc.property(
        fc.record({ batch: fc.integer({ min: 1, max: 3 }), M: dim, N: dim, K: dim }),
        fc.boolean(),
        fc.boolean(),
        fc.boolean(),
        fc.boolean(),
        fc.integer(),
        ({ batch, M, N, K }, transA, transB, shareA, shareB, seed) => {
          const rand = random(seed);
          // Logical matrices A[b] [M, K] and B[b] [K, N]; a shared operand is one matrix for every batch.
          const A = Array.from({ length: shareA ? 1 : batch }, () => Array.from({ length: M }, () => randomArray(rand, K)));
          const Bm = Array.from({ length: shareB ? 1 : batch }, () => Array.from({ length: K }, () => randomArray(rand, N)));
          // Lay each matrix out as stored: row-major, or row-major of its transpose when trans.
          const store = (m: Float64Array[], trans: boolean) =>
            trans ? Array.from(m[0]!).flatMap((_, c) => m.map((row) => row[c]!)) : m.flatMap((row) => Array.from(row));
          const aData = A.flatMap((m) => store(m, transA));
          const bData = Bm.flatMap((m) => store(m, transB));
          const out = cpu.run(matmulOp, f64(aData), f64(bData), {
            batch, M, N, K, transA, transB,
            batchStrideA: shareA ? 0 : M * K,
            batchStrideB: shareB ? 0 : K * N,
          });
          const expected: number[] = [];
          for (let b = 0; b < batch; b++) {
            const a = A[shareA ? 0 : b]!;
            const bb = Bm[shareB ? 0 : b]!;
            for (let i = 0; i < M; i++) {
              for (let j = 0; j < N; j++) {
                let s = 0;
                for (let k = 0; k < K; k++) s += a[i]![k]! * bb[k]![j]!;
                expected.push(s);
              }
            }
          }
          expectClose(values(out), expected, TIGHT);
        },
      ),
      RUNS,
    );
  });

  it("f32 inputs give an f32 output equal to the f64 product rounded", () => {
    const a = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    const g = { batch: 1, M: 2, N: 2, K: 3, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 };
    const out32 = cpu.run(matmulOp, cpu.upload(Float32Array.from(a)), cpu.upload(Float32Array.from(a)), g);
    expect(out32.dtype).toBe("f32");
    const a32 = Array.from(Float32Array.from(a));
    expectClose(values(out32), values(cpu.run(matmulOp, f64(a32), f64(a32), g)), 1e-7); // one f32 rounding: 2^-24 relative
  });
});

describe("softmax", () => {
  it("rows sum to 1, equal exp(log-softmax) and the naive exp(x) / sum exp(x), and ignore a constant shift", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 9 }), fc.integer(), (rows, cols, seed) => {
        const x = randomArray(random(seed), rows * cols, 10);
        const p = values(cpu.run(softmaxOp, f64(x), rows, cols, false));
        const logp = values(cpu.run(softmaxOp, f64(x), rows, cols, true));
        const shifted = values(cpu.run(softmaxOp, f64(x.map((v) => v + 1000)), rows, cols, false)); // naive exp would overflow
        const naive: number[] = [];
        for (let r = 0; r < rows; r++) {
          const e = Array.from(x.subarray(r * cols, (r + 1) * cols), Math.exp);
          const z = e.reduce((a, b) => a + b, 0);
          naive.push(...e.map((v) => v / z));
          expect(Math.abs(p.subarray(r * cols, (r + 1) * cols).reduce((a, b) => a + b, 0) - 1)).toBeLessThan(TIGHT);
        }
        expectClose(p, naive, TIGHT, "naive");
        expectClose(logp.map(Math.exp), p, TIGHT, "exp(log-softmax)");
        expectClose(shifted, p, 1e-10, "shift"); // x + 1000 loses ~1e-13 absolute in the input itself
      }),
      RUNS,
    );
  });
});

describe("crossEntropy", () => {
  const IGNORE = -100;
  const problem = fc.record({
    rows: fc.integer({ min: 1, max: 5 }),
    cols: fc.integer({ min: 1, max: 7 }),
    seed: fc.integer(),
  });
  /** Random logits and targets, with about one row in four ignored. */
  function setup(rows: number, cols: number, seed: number) {
    const rand = random(seed);
    const logits = randomArray(rand, rows * cols, 3);
    const targets = Array.from({ length: rows }, () => (rand() < -0.5 ? IGNORE : Math.floor(((rand() + 1) / 2) * cols)));
    return { logits, targets, gradLoss: randomArray(rand, rows) };
  }

  it("equals -log softmax at the target, and 0 on ignored rows", () => {
    fc.assert(
      fc.property(problem, ({ rows, cols, seed }) => {
        const { logits, targets } = setup(rows, cols, seed);
        const loss = values(cpu.run(crossEntropyOp, f64(logits), i32(targets), { rows, cols, ignoreIndex: IGNORE }));
        const logp = values(cpu.run(softmaxOp, f64(logits), rows, cols, true));
        const expected = targets.map((t, r) => (t === IGNORE ? 0 : -logp[r * cols + t]!));
        expectClose(loss, expected, TIGHT);
      }),
      RUNS,
    );
  });

  it("backward equals finite differences of sum_r gradLoss[r] * loss[r]", () => {
    fc.assert(
      fc.property(problem, ({ rows, cols, seed }) => {
        const { logits, targets, gradLoss } = setup(rows, cols, seed);
        const weighted = (z: Float64Array) =>
          values(cpu.run(crossEntropyOp, f64(z), i32(targets), { rows, cols, ignoreIndex: IGNORE })).reduce((acc, l, r) => acc + l * gradLoss[r]!, 0);
        const grad = values(cpu.run(crossEntropyBackwardOp, f64(logits), i32(targets), f64(gradLoss), { rows, cols, ignoreIndex: IGNORE }));
        expectClose(grad, finiteDifferences(weighted, logits), FD);
      }),
      { ...RUNS, numRuns: 20 },
    );
  });

  it("a target outside [0, cols) that is not ignored throws a RangeError naming it", () => {
    expect(() => cpu.run(crossEntropyOp, f64([0, 0]), i32([2]), { rows: 1, cols: 2, ignoreIndex: IGNORE })).toThrow(/target 2 at row 0/);
  });
});

/** Central differences d f / d x[i] = (f(x + h e_i) - f(x - h e_i)) / 2h, h = 1e-6. */
function finiteDifferences(f: (x: Float64Array) => number, x: Float64Array): Float64Array {
  const h = 1e-6;
  return Float64Array.from(x, (xi, i) => {
    const plus = Float64Array.from(x);
    const minus = Float64Array.from(x);
    plus[i] = xi + h;
    minus[i] = xi - h;
    return (f(plus) - f(minus)) / (2 * h);
  });
}

describe("gather and scatterAdd", () => {
  it("scatterAdd is the transpose of gather: <gather(T), G> = <T, scatterAdd(G)>", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 0, max: 9 }),
        fc.integer(),
        (V, D, N, seed) => {
          const rand = random(seed);
          const ids = Array.from({ length: N }, () => Math.floor(((rand() + 1) / 2) * V));
          const T = randomArray(rand, V * D);
          const G = randomArray(rand, N * D);
          const gathered = values(cpu.run(gatherOp, f64(T), i32(ids), { V, D }));
          ids.forEach((id, n) => expectClose(gathered.subarray(n * D, (n + 1) * D), T.subarray(id * D, (id + 1) * D), 0, `row ${n}`));
          const scattered = values(cpu.run(scatterAddOp, f64(G), i32(ids), { V, D }));
          const dot = (x: ArrayLike<number>, y: ArrayLike<number>) => Array.from(x).reduce((acc, v, i) => acc + v * y[i]!, 0);
          expectClose([dot(gathered, G)], [dot(T, scattered)], TIGHT);
        },
      ),
      RUNS,
    );
  });

  it("an id outside [0, V) throws a RangeError naming the id, its index and V", () => {
    expect(() => cpu.run(gatherOp, f64([1, 2, 3, 4, 5]), i32([0, 4, 7]), { V: 5, D: 1 })).toThrow(RangeError);
    expect(() => cpu.run(gatherOp, f64([1, 2, 3, 4, 5]), i32([0, 4, 7]), { V: 5, D: 1 })).toThrow(/id 7 at index 2 is outside \[0, 5\)/);
    expect(() => cpu.run(scatterAddOp, f64([1]), i32([-1]), { V: 5, D: 1 })).toThrow(/id -1 at index 0/);
  });
});

describe("rmsNorm", () => {
  it("equals x / rms(x) * weight with rms = sqrt(mean(x^2) + eps)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 9 }), fc.integer(), (rows, D, seed) => {
        const rand = random(seed);
        const x = randomArray(rand, rows * D, 2);
        const w = randomArray(rand, D);
        const eps = 1e-5;
        const expected = Array.from(x, (xi, i) => {
          const row = x.subarray(Math.floor(i / D) * D, Math.floor(i / D) * D + D);
          const rms = Math.sqrt(row.reduce((acc, v) => acc + v * v, 0) / D + eps);
          return (xi / rms) * w[i % D]!;
        });
        expectClose(values(cpu.run(rmsNormOp, f64(x), f64(w), { rows, D, eps })), expected, TIGHT);
      }),
      RUNS,
    );
  });
});

describe("rope", () => {
  const problem = fc.record({
    B: fc.integer({ min: 1, max: 2 }),
    H: fc.integer({ min: 1, max: 3 }),
    T: fc.integer({ min: 1, max: 5 }),
    half: fc.integer({ min: 1, max: 4 }),
    perBatch: fc.boolean(),
    seed: fc.integer(),
  });
  /** Llama's tables: angle(b, t, d) = position(b, t) * 10000^(-2d / Dh); per-batch positions when Bc = B. */
  function tables(B: number, T: number, half: number, perBatch: boolean) {
    const Bc = perBatch ? B : 1;
    const angle = Array.from({ length: Bc * T * half }, (_, n) => {
      const b = Math.floor(n / (T * half));
      const t = Math.floor(n / half) % T;
      return (t + 3 * b) * Math.pow(10000, (-2 * (n % half)) / (2 * half));
    });
    return { Bc, cos: angle.map(Math.cos), sin: angle.map(Math.sin) };
  }

  it("equals HF's x * cos + rotate_half(x) * sin, and inverse undoes it", () => {
    fc.assert(
      fc.property(problem, ({ B, H, T, half, perBatch, seed }) => {
        const Dh = 2 * half;
        const x = randomArray(random(seed), B * H * T * Dh);
        const { Bc, cos, sin } = tables(B, T, half, perBatch);
        const rotated = values(cpu.run(ropeOp, f64(x), f64(cos), f64(sin), { B, H, T, Dh, Bc, inverse: false }));
        const expected = Array.from(x, (xi, n) => {
          const d = n % Dh;
          const row = n - d;
          const b = Math.floor(n / (H * T * Dh));
          const t = Math.floor(n / Dh) % T;
          const table = ((Bc === 1 ? 0 : b) * T + t) * half + (d % half); // cos/sin repeated twice along Dh
          const rotateHalf = d < half ? -x[row + d + half]! : x[row + d - half]!; // cat(-x2, x1)
          return xi * cos[table]! + rotateHalf * sin[table]!;
        });
        expectClose(rotated, expected, TIGHT, "forward");
        const back = values(cpu.run(ropeOp, f64(rotated), f64(cos), f64(sin), { B, H, T, Dh, Bc, inverse: true }));
        expectClose(back, x, TIGHT, "inverse");
      }),
      RUNS,
    );
  });

  it("an odd head dim throws ShapeError", () => {
    expect(() => cpu.run(ropeOp, f64([1, 2, 3]), f64([1]), f64([0]), { B: 1, H: 1, T: 1, Dh: 3, Bc: 1, inverse: false })).toThrow(ShapeError);
  });
});

describe("attention", () => {
  const problem = fc.record({
    B: fc.integer({ min: 1, max: 2 }),
    Hkv: fc.integer({ min: 1, max: 2 }),
    group: fc.integer({ min: 1, max: 3 }),
    Tq: fc.integer({ min: 1, max: 5 }),
    Tk: fc.integer({ min: 1, max: 6 }),
    Dh: fc.integer({ min: 1, max: 5 }),
    causal: fc.boolean(),
    window: fc.integer({ min: 0, max: 3 }),
    masked: fc.boolean(),
    seed: fc.integer(),
  });
  type Problem = typeof problem extends fc.Arbitrary<infer P> ? P : never;

  function setup(p: Problem) {
    const rand = random(p.seed);
    const H = p.Hkv * p.group;
    const g: AttentionGeometry = { B: p.B, H, Hkv: p.Hkv, Tq: p.Tq, Tk: p.Tk, Dh: p.Dh, scale: 1 / Math.sqrt(p.Dh), causal: p.causal, window: p.window };
    // Padding drops about one key in three, so some query rows see no key at all.
    const mask = p.masked ? Array.from({ length: p.B * p.Tk }, () => (rand() < -0.33 ? 0 : 1)) : null;
    return {
      g,
      mask,
      q: randomArray(rand, p.B * H * p.Tq * p.Dh, 2),
      k: randomArray(rand, p.B * p.Hkv * p.Tk * p.Dh, 2),
      v: randomArray(rand, p.B * p.Hkv * p.Tk * p.Dh),
      w: randomArray(rand, p.B * H * p.Tq * p.Dh),
    };
  }

  function run(g: AttentionGeometry, mask: number[] | null, q: Float64Array, k: Float64Array, v: Float64Array) {
    const { out, lse } = cpu.run(attentionOp, { q: f64(q), k: f64(k), v: f64(v), keyMask: mask && f64(mask) }, g);
    return { out: values(out), lse: values(lse) };
  }

  /** softmax(Q K^T * scale + M) V with M = 0 where visible and -Infinity elsewhere, materialised. */
  function naive(g: AttentionGeometry, mask: number[] | null, q: Float64Array, k: Float64Array, v: Float64Array) {
    const out: number[] = [];
    const lse: number[] = [];
    for (let b = 0; b < g.B; b++) {
      for (let h = 0; h < g.H; h++) {
        const kvh = Math.floor((h * g.Hkv) / g.H);
        for (let i = 0; i < g.Tq; i++) {
          const pos = g.Tk - g.Tq + i;
          const scores = Array.from({ length: g.Tk }, (_, j) => {
            const visible = (!g.causal || j <= pos) && (g.window === 0 || pos - j < g.window) && (mask === null || mask[b * g.Tk + j] !== 0);
            if (!visible) return -Infinity;
            let s = 0;
            for (let d = 0; d < g.Dh; d++) s += q[((b * g.H + h) * g.Tq + i) * g.Dh + d]! * k[((b * g.Hkv + kvh) * g.Tk + j) * g.Dh + d]!;
            return s * g.scale;
          });
          const m = Math.max(...scores);
          if (m === -Infinity) {
            out.push(...new Array<number>(g.Dh).fill(0));
            lse.push(0);
            continue;
          }
          const e = scores.map((s) => Math.exp(s - m));
          const z = e.reduce((a, c) => a + c, 0);
          lse.push(m + Math.log(z));
          for (let d = 0; d < g.Dh; d++) {
            out.push(e.reduce((acc, ej, j) => acc + (ej / z) * v[((b * g.Hkv + kvh) * g.Tk + j) * g.Dh + d]!, 0));
          }
        }
      }
    }
    return { out, lse };
  }

  it("forward equals softmax(QK^T * scale + mask) V, and lse its log normaliser", () => {
    fc.assert(
      fc.property(problem, (p) => {
        const { g, mask, q, k, v } = setup(p);
        const got = run(g, mask, q, k, v);
        const want = naive(g, mask, q, k, v);
        expectClose(got.out, want.out, TIGHT, "out");
        expectClose(got.lse, want.lse, TIGHT, "lse");
      }),
      RUNS,
    );
  });

  it("backward equals finite differences of sum(W * attention(q, k, v))", () => {
    fc.assert(
      fc.property(problem, (p) => {
        const { g, mask, q, k, v, w } = setup(p);
        const loss = (qq: Float64Array, kk: Float64Array, vv: Float64Array) =>
          run(g, mask, qq, kk, vv).out.reduce((acc, o, n) => acc + o * w[n]!, 0);
        const { out, lse } = cpu.run(attentionOp, { q: f64(q), k: f64(k), v: f64(v), keyMask: mask && f64(mask) }, g);
        const grads = cpu.run(attentionBackwardOp, { q: f64(q), k: f64(k), v: f64(v), keyMask: mask && f64(mask), out, dOut: f64(w), lse }, g);
        expectClose(values(grads.dq), finiteDifferences((x) => loss(x, k, v), q), FD, "dq");
        expectClose(values(grads.dk), finiteDifferences((x) => loss(q, x, v), k), FD, "dk");
        expectClose(values(grads.dv), finiteDifferences((x) => loss(q, k, x), v), FD, "dv");
      }),
      { ...RUNS, numRuns: 25 },
    );
  });

  it("a fully padded batch row outputs zeros with finite lse and zero gradients", () => {
    const g: AttentionGeometry = { B: 2, H: 2, Hkv: 1, Tq: 3, Tk: 3, Dh: 2, scale: 0.7, causal: true, window: 0 };
    const rand = random(7);
    const q = randomArray(rand, 2 * 2 * 3 * 2);
    const k = randomArray(rand, 2 * 3 * 2);
    const v = randomArray(rand, 2 * 3 * 2);
    const mask = f64([0, 0, 0, 1, 1, 1]); // batch row 0 is all padding
    const { out, lse } = cpu.run(attentionOp, { q: f64(q), k: f64(k), v: f64(v), keyMask: mask }, g);
    expect(Array.from(values(out).subarray(0, 12))).toEqual(new Array(12).fill(0));
    expect(Array.from(values(lse)).every(Number.isFinite)).toBe(true);
    const grads = cpu.run(attentionBackwardOp, { q: f64(q), k: f64(k), v: f64(v), keyMask: mask, out, dOut: f64(randomArray(rand, 24)), lse }, g);
    expect(Array.from(values(grads.dq).subarray(0, 12))).toEqual(new Array(12).fill(0));
    expect(Array.from(values(grads.dk).subarray(0, 6))).toEqual(new Array(6).fill(0));
    expect(Array.from(values(grads.dv).subarray(0, 6))).toEqual(new Array(6).fill(0));
    expect(values(grads.dq).subarray(12).some((x) => x !== 0)).toBe(true);
  });

  it("H not a multiple of Hkv throws ShapeError", () => {
    const g: AttentionGeometry = { B: 1, H: 3, Hkv: 2, Tq: 1, Tk: 1, Dh: 1, scale: 1, causal: false, window: 0 };
    expect(() => cpu.run(attentionOp, { q: f64([1, 1, 1]), k: f64([1, 1]), v: f64([1, 1]), keyMask: null }, g)).toThrow(ShapeError);
  });
});

describe("adamw", () => {
  it("the first step matches its closed form: m = (1-b1) g, v = (1-b2) g^2, p -= lr (g / (|g| + eps) + wd p)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 9 }), fc.integer(), (n, seed) => {
        const rand = random(seed);
        const p = randomArray(rand, n);
        const g = randomArray(rand, n);
        const h = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, step: 1 };
        const [param, grad, m, v] = [f64(p), f64(g), cpu.zeros("f64", n), cpu.zeros("f64", n)];
        cpu.run(adamwOp, param!, grad!, m!, v!, h);
        // After one step the bias corrections undo the (1 - beta) factors: mhat = g, sqrt(vhat) = |g|.
        expectClose(values(m!), Array.from(g, (gi) => (1 - h.beta1) * gi), TIGHT, "m");
        expectClose(values(v!), Array.from(g, (gi) => (1 - h.beta2) * gi * gi), TIGHT, "v");
        const expected = Array.from(p, (pi, i) => pi - h.lr * (g[i]! / (Math.abs(g[i]!) + h.eps) + h.weightDecay * pi));
        expectClose(values(param!), expected, TIGHT, "param");
      }),
      RUNS,
    );
  });
});

describe("the cpu backend", () => {
  it("counts live bytes, reads copies and rejects freed storages by op name", async () => {
    const local = new CpuBackend();
    const a = local.upload(Float64Array.from([1, 2, 3]));
    const b = local.zeros("f32", 4);
    expect(local.liveBytes()).toBe(3 * 8 + 4 * 4);
    const copy = await local.read(a, 1, 2);
    copy[0] = 99;
    expect(Array.from(await local.read(a))).toEqual([1, 2, 3]);
    await expect(local.read(a, 2, 5)).rejects.toThrow(RangeError);
    local.free(a);
    expect(a.freed).toBe(true);
    expect(local.liveBytes()).toBe(16);
    expect(() => local.unary("exp", contiguous(a, [3]))).toThrow(DisposedError);
    expect(() => local.run(softmaxOp, a, 1, 3, false)).toThrow(/softmax/);
    expect(() => local.free(a)).toThrow(DisposedError);
    local.free(b);
    expect(local.liveBytes()).toBe(0);
  });

  it("kernels check dtypes and sizes", () => {
    expect(() => cpu.run(matmulOp, i32([1]), i32([1]), { batch: 1, M: 1, N: 1, K: 1, transA: false, transB: false, batchStrideA: 0, batchStrideB: 0 })).toThrow(DTypeError);
    expect(() => cpu.run(softmaxOp, f64([1, 2, 3]), 2, 2, false)).toThrow(ShapeError);
    expect(() => cpu.run(gatherOp, f64([1, 2]), f64([0]), { V: 2, D: 1 })).toThrow(/ids must be i32/);
  });
});

describe("the kernel registry", () => {
  it("runs a registered kernel with its operands, and names op and device when there is none", async () => {
    const scaled = deviceOp<[x: Storage, factor: number], Storage>("scaledCopy");
    expect(() => cpu.run(scaled, f64([1]), 2)).toThrow(DeviceError);
    expect(() => cpu.run(scaled, f64([1]), 2)).toThrow("scaledCopy: no kernel on the cpu device (kernels exist for: none)");
    registerKernel(scaled, "cpu", (device, x, factor) => {
      const data = (x as CpuStorage).data;
      const out = device.allocate(x.dtype, x.numel);
      for (let i = 0; i < out.length; i++) out[i] = data[i]! * factor;
      return device.wrap(out);
    });
    expect(Array.from(await cpu.read(cpu.run(scaled, f64([1, -2.5]), 3)))).toEqual([3, -7.5]);
    expect(() => registerKernel(scaled, "cpu", (_device, x) => x)).toThrow("registerKernel: scaledCopy already has a kernel on cpu");
  });
});
