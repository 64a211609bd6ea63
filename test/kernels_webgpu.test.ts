import fc from "fast-check";
import { describe, expect, test } from "vitest";
import type { Storage, View } from "../src/tensor/backend.ts";
import type { MatmulGeometry } from "../src/tensor/ops/matmul.ts";
import { matmulOp } from "../src/tensor/ops/matmul.ts";
import type { AttentionGeometry } from "../src/tensor/ops/attention.ts";
import { attentionBackwardOp, attentionOp } from "../src/tensor/ops/attention.ts";
import { crossEntropyBackwardOp, crossEntropyOp } from "../src/tensor/ops/cross_entropy.ts";
import { gatherOp, scatterAddOp } from "../src/tensor/ops/embedding.ts";
import { rmsNormOp } from "../src/tensor/ops/rmsnorm.ts";
import { ropeOp } from "../src/tensor/ops/rope.ts";
import { softmaxOp } from "../src/tensor/ops/softmax.ts";
import { reduceRowsOp } from "../src/tensor/ops/reduce.ts";
import type { AdamWStep } from "../src/tensor/optim.ts";
import { adamwOp } from "../src/tensor/optim.ts";
import type { HostArray } from "../src/tensor/dtype.ts";
import { DTypeError, DeviceLimitError, DisposedError, ShapeError } from "../src/tensor/errors.ts";
import { contiguousStrides } from "../src/tensor/shape.ts";
import { CpuBackend } from "../src/kernels/cpu.ts";
import { BINARY_OPS, UNARY_OPS, binaryDef, unaryDef, type PointwiseTol } from "../src/tensor/ops/pointwise_table.ts";
import type { WebGpuBackend, WebGpuStorage } from "../src/kernels/webgpu/backend.ts";
import { kernel } from "../src/kernels/webgpu/program.ts";
import { MATMUL_VARIANTS, matmulKernelKey } from "../src/kernels/matmul.wgsl.ts";
import { expectClose } from "./helpers/close.ts";
import { describeWebGpu, testWebGpu, webgpuOrSkip } from "./helpers/devices.ts";
import { random } from "./helpers/random.ts";

/**
 * Every Backend method and fused op on webgpu against the cpu reference on the same random inputs.
 *
 * Inputs come from fast-check with a fixed seed (reproducible, shrinking to a small failing
 * case): random shapes with sizes that are not multiples of any tile or workgroup, size-1 axes,
 * transposed / sliced / stride-0 broadcast views, and magnitudes from 1e-30 to 1e30 where the op
 * allows. The cpu reference computes in doubles and rounds once, so it is the exact f32 answer up
 * to half an ulp; each tolerance below bounds the error of the f32 GPU computation and says why.
 * All tolerances are |gpu - cpu| <= atol + rtol |cpu|, element by element.
 */

const cpu = new CpuBackend();
const SEED = 20250611;
const EPS = 2 ** -23;
/** Results below f32's normal range may be flushed to zero on the GPU (SwiftShader does). */
const DENORMAL = 1.2e-38;

function f32s(n: number, seed: number, f: (u: number, i: number) => number = (u) => u): Float32Array {
  const r = random(seed);
  return Float32Array.from({ length: n }, (_, i) => f(r(), i));
}

/** Tolerance of one element, given the expected value and its index (expectClose's per-element form). */
type Tol = (expected: number, i: number) => number;
const rel = (rtol: number, atol = DENORMAL): Tol => (e) => atol + rtol * Math.abs(e);
/** Exact, except that results below f32's normal range may be flushed to zero. */
const EXACT: Tol = () => DENORMAL;

/** Uploads one host array to both devices. */
function both(gpu: WebGpuBackend, data: HostArray): [Storage, Storage] {
  return [gpu.upload(data), cpu.upload(data)];
}

async function compare(gpu: WebGpuBackend, g: Storage, c: Storage, tol: Tol, label: string): Promise<void> {
  const [a, e] = [await gpu.read(g), await cpu.read(c)];
  expectClose(a, e, tol, label);
}

function freeAll(gpu: WebGpuBackend, ...ss: Storage[]): void {
  for (const s of ss) gpu.free(s);
}

// ---- random strided views ----

/**
 * How a logical shape sits in its storage: the storage's axes in `perm` order (a transpose), each
 * axis padded by `pad` with the view starting at `start` (a slice with an offset), or of size 1
 * with stride 0 when `bcast` (a broadcast).
 */
interface Layout {
  perm: number[];
  pad: number[];
  start: number[];
  bcast: boolean[];
}

function layoutArb(rank: number): fc.Arbitrary<Layout> {
  const axis = fc.record({ key: fc.double({ min: 0, max: 1, noNaN: true }), pad: fc.nat(2), startFrac: fc.double({ min: 0, max: 1, noNaN: true }), bcast: fc.boolean() });
  return fc
    .tuple(fc.array(axis, { minLength: rank, maxLength: rank }), fc.boolean(), fc.boolean())
    .map(([axes, transposed, broadcasts]) => ({
      perm: transposed ? axes.map((a, i) => [a.key, i] as const).sort((x, y) => x[0] - y[0]).map(([, i]) => i) : axes.map((_, i) => i),
      pad: axes.map((a) => a.pad),
      start: axes.map((a) => Math.min(a.pad, Math.floor(a.startFrac * (a.pad + 1)))),
      bcast: axes.map((a) => broadcasts && a.bcast),
    }));
}

/** The view's strides and offset, and the storage size it needs. */
function place(shape: readonly number[], l: Layout): { strides: number[]; offset: number; size: number } {
  const dims = shape.map((s, a) => (l.bcast[a] ? 1 : s + l.pad[a]!));
  const strides = new Array<number>(shape.length).fill(0);
  let size = 1;
  for (let i = l.perm.length - 1; i >= 0; i--) {
    const a = l.perm[i]!;
    strides[a] = size;
    size *= dims[a]!;
  }
  const offset = shape.reduce((o, _, a) => o + (l.bcast[a] ? 0 : l.start[a]! * strides[a]!), 0);
  return { strides: strides.map((s, a) => (l.bcast[a] ? 0 : s)), offset, size };
}

const shapeArb = fc.oneof(
  fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 0, maxLength: 4 }),
  fc.array(fc.integer({ min: 1, max: 300 }), { minLength: 1, maxLength: 2 }),
);

/** A shape with `n` independent layouts on it. */
function viewsArb(n: number) {
  return shapeArb.chain((shape) => fc.tuple(fc.constant(shape), fc.array(layoutArb(shape.length), { minLength: n, maxLength: n }), fc.nat()));
}

/** The same view (geometry) on a gpu and a cpu storage holding `data`. */
function viewPair(gpu: WebGpuBackend, shape: number[], l: Layout, data: (size: number) => HostArray) {
  const p = place(shape, l);
  const [g, c] = both(gpu, data(p.size));
  const geo = { shape, strides: p.strides, offset: p.offset };
  return { g: { storage: g, ...geo } as View, c: { storage: c, ...geo } as View };
}

// ---- elementwise ----

/** A pointwise-table tolerance as a per-element one (results below f32's normal range may flush to zero). */
const tableTol = (t: PointwiseTol): Tol => (t.rel === 0 && t.abs === 0 ? EXACT : rel(t.rel, t.abs || DENORMAL));

const MAGNITUDES = [1e-30, 1e-3, 1, 1e3, 1e30];

describe("elementwise", () => {
  testWebGpu("unary: every op of the pointwise table on random strided views, f32 and i32", async (gpu) => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...UNARY_OPS), viewsArb(1), fc.constantFrom(...MAGNITUDES), fc.boolean(), async (op, [shape, [l], seed], mag, int) => {
        const { int: takesInt, test } = unaryDef(op);
        const [tol, why] = [tableTol(test.wgsl), test.wgsl.why];
        const isInt = int && takesInt;
        const data = (n: number) => (isInt ? Int32Array.from(f32s(n, seed), (u) => Math.round(u * 1000)) : f32s(n, seed, (u) => test.wide(u, mag)));
        const { g, c } = viewPair(gpu, shape, l!, data);
        const [go, co] = [gpu.unary(op, g), cpu.unary(op, c)];
        await compare(gpu, go, co, isInt ? EXACT : tol, `unary ${op} ${JSON.stringify(shape)} (tolerance: ${isInt ? "exact" : why})`);
        freeAll(gpu, g.storage, go);
      }),
      { seed: SEED, numRuns: 120 },
    );
  });

  testWebGpu("unary: float-only ops reject i32", async (gpu) => {
    const s = gpu.upload(new Int32Array([1, 2]));
    expect(() => gpu.unary("exp", { storage: s, shape: [2], strides: [1], offset: 0 })).toThrow(DTypeError);
    gpu.free(s);
  });

  testWebGpu("binary: every op on random broadcast / transposed views, f32 and i32", async (gpu) => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...BINARY_OPS), viewsArb(2), fc.constantFrom(...MAGNITUDES), fc.boolean(), async (op, [shape, [la, lb], seed], mag, int) => {
        const { int: takesInt, test } = binaryDef(op);
        const isInt = int && takesInt;
        // Integers: small quantized values, so that comparisons meet equal operands.
        const gen = (s: number, operand: 0 | 1) => (n: number) =>
          isInt ? Int32Array.from(f32s(n, s), (u) => Math.round(u * 8)) : f32s(n, s, (u) => test.wide[operand](u, mag));
        const a = viewPair(gpu, shape, la!, gen(seed, 0));
        const b = viewPair(gpu, shape, lb!, gen(seed + 1, 1));
        const [go, co] = [gpu.binary(op, a.g, b.g), cpu.binary(op, a.c, b.c)];
        await compare(gpu, go, co, tableTol(test.wgsl), `binary ${op} ${JSON.stringify(shape)} (tolerance: ${test.wgsl.why})`);
        freeAll(gpu, a.g.storage, b.g.storage, go);
      }),
      { seed: SEED, numRuns: 120 },
    );
  });

  testWebGpu("where, cast and assign on random views (exact: they only move or convert values)", async (gpu) => {
    await fc.assert(
      fc.asyncProperty(viewsArb(3), fc.boolean(), async ([shape, [lc, la, lb], seed], intCond) => {
        const cond = viewPair(gpu, shape, lc!, (n) => (intCond ? Int32Array.from(f32s(n, seed), (u) => (u > 0 ? 3 : 0)) : f32s(n, seed, (u) => (u > 0 ? 0.5 : 0))));
        const a = viewPair(gpu, shape, la!, (n) => f32s(n, seed + 1, (u) => u * 1e6));
        const b = viewPair(gpu, shape, lb!, (n) => f32s(n, seed + 2));
        const [gw, cw] = [gpu.where(cond.g, a.g, b.g), cpu.where(cond.c, a.c, b.c)];
        await compare(gpu, gw, cw, EXACT, "where");
        // cast f32 -> i32 truncates toward zero; i32 -> f32 rounds to nearest.
        const [gi, ci] = [gpu.cast(a.g, "i32"), cpu.cast(a.c, "i32")];
        await compare(gpu, gi, ci, EXACT, "cast f32->i32");
        const [gf, cf] = [gpu.cast(cond.g, "f32"), cpu.cast(cond.c, "f32")];
        await compare(gpu, gf, cf, EXACT, "cast ->f32");
        // assign b into the view a, unless a broadcasts (several elements would share one slot).
        if (a.g.strides.every((st, i) => st !== 0 || shape[i] === 1)) {
          gpu.assign(a.g, b.g);
          cpu.assign(a.c, b.c);
          await compare(gpu, a.g.storage, a.c.storage, EXACT, "assign");
        }
        freeAll(gpu, cond.g.storage, a.g.storage, b.g.storage, gw, gi, gf);
      }),
      { seed: SEED, numRuns: 60 },
    );
  });

  testWebGpu("assign between overlapping views of one storage behaves as a copy", async (gpu) => {
    const data = f32s(10, 1);
    const [g, c] = both(gpu, data);
    const view = (s: Storage, offset: number): View => ({ storage: s, shape: [9], strides: [1], offset });
    gpu.assign(view(g, 1), view(g, 0));
    cpu.assign(view(c, 1), view(c, 0));
    await compare(gpu, g, c, EXACT, "x[1:] = x[:-1]");
    gpu.free(g);
  });

  testWebGpu("zeros, upload, read ranges, fill (f32 and i32, zero and non-zero)", async (gpu) => {
    const z = gpu.zeros("f32", 1000);
    expect(Array.from(await gpu.read(z, 990, 10))).toEqual(new Array(10).fill(0));
    gpu.fill(z, 2.5);
    expect(Array.from(await gpu.read(z, 0, 3))).toEqual([2.5, 2.5, 2.5]);
    gpu.fill(z, 0);
    expect((await gpu.read(z)).every((v) => v === 0)).toBe(true);
    const i = gpu.upload(Int32Array.from([1, -2, 3, 2147483647]));
    expect(Array.from(await gpu.read(i, 1, 3))).toEqual([-2, 3, 2147483647]);
    gpu.fill(i, -7.9);
    expect(Array.from(await gpu.read(i))).toEqual([-7, -7, -7, -7]);
    expect(await gpu.read(i, 4, 0)).toHaveLength(0);
    await expect(gpu.read(i, 2, 3)).rejects.toThrow(RangeError);
    expect(() => gpu.upload(new Float64Array(2))).toThrow(DTypeError);
    freeAll(gpu, z, i);
  });
});

// ---- rows, matmul, nn ----

/** Rows and columns for row kernels: 1, sizes around the 256-wide workgroup, and a long row. */
const rowsArb = fc.integer({ min: 1, max: 40 });
const colsArb = fc.oneof(fc.integer({ min: 1, max: 300 }), fc.constantFrom(1, 255, 256, 257, 3000));

/** reduceRows sum / max, f32 and i32. */
async function checkReduceRows(gpu: WebGpuBackend, numRuns: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(fc.constantFrom("sum" as const, "max" as const), rowsArb, colsArb, fc.constantFrom(1e-20, 1, 1e20), fc.boolean(), fc.nat(), async (op, rows, cols, mag, int, seed) => {
      const data = int ? Int32Array.from(f32s(rows * cols, seed), (u) => Math.round(u * 1e6)) : f32s(rows * cols, seed, (u) => u * mag);
      const [gx, cx] = both(gpu, data);
      const [go, co] = [gpu.run(reduceRowsOp, op, gx, rows, cols), cpu.run(reduceRowsOp, op, cx, rows, cols)];
      // A sum of n f32 terms in any order: error <= n eps sum|x| in the worst case, ~sqrt(n) eps
      // typically; 4 sqrt(n) eps sum|x| is many standard deviations. max and i32 sums are exact.
      const absSum = (r: number) => {
        let acc = 0;
        for (let c = 0; c < cols; c++) acc += Math.abs(data[r * cols + c]!);
        return acc;
      };
      const tol: Tol = op === "sum" && !int ? (_, r) => DENORMAL + 4 * Math.sqrt(cols) * EPS * absSum(r) : EXACT;
      await compare(gpu, go, co, tol, `reduce ${op} [${rows},${cols}]`);
      freeAll(gpu, gx, go);
    }),
    { seed: SEED, numRuns },
  );
}

/** softmax and log-softmax. */
async function checkSoftmax(gpu: WebGpuBackend, numRuns: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(rowsArb, colsArb, fc.constantFrom(1e-3, 1, 30), fc.boolean(), fc.nat(), async (rows, cols, scale, log, seed) => {
      const [gx, cx] = both(gpu, f32s(rows * cols, seed, (u) => u * scale));
      const [go, co] = [gpu.run(softmaxOp, gx, rows, cols, log), cpu.run(softmaxOp, cx, rows, cols, log)];
      // exp(x - lse): the argument carries an absolute error ~ eps (|max| + log cols) and exp adds
      // 3 + 2|x - lse| ulp; log-softmax x - lse is off by about eps |lse| absolute.
      const spread = 2 * scale + Math.log(cols);
      const tol = log ? rel(2 * EPS, 8 * EPS * spread) : rel((8 + 4 * spread) * EPS, DENORMAL);
      await compare(gpu, go, co, tol, `softmax log=${log} [${rows},${cols}] scale ${scale}`);
      freeAll(gpu, gx, go);
    }),
    { seed: SEED, numRuns },
  );
}

/** crossEntropy forward and backward, with ignored rows. */
async function checkCrossEntropy(gpu: WebGpuBackend, numRuns: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(rowsArb, colsArb, fc.constantFrom(1e-3, 1, 30), fc.nat(), async (rows, cols, scale, seed) => {
      const [gl, cl] = both(gpu, f32s(rows * cols, seed, (u) => u * scale));
      const targets = Int32Array.from(f32s(rows, seed + 1), (u) => (u > 0.7 ? -100 : Math.floor(((u + 1) / 2) * cols)));
      const [gt, ct] = both(gpu, targets);
      const [gg, cg] = both(gpu, f32s(rows, seed + 2));
      const [gf, cf] = [gpu.run(crossEntropyOp, gl, gt, { rows, cols, ignoreIndex: -100 }), cpu.run(crossEntropyOp, cl, ct, { rows, cols, ignoreIndex: -100 })];
      // loss = lse - x_t: absolute error ~ eps (|lse| + |x_t|) from the log-sum-exp.
      const spread = 2 * scale + Math.log(cols);
      await compare(gpu, gf, cf, rel(2 * EPS, 8 * EPS * spread), `crossEntropy [${rows},${cols}]`);
      const [gb, cb] = [gpu.run(crossEntropyBackwardOp, gl, gt, gg, { rows, cols, ignoreIndex: -100 }), cpu.run(crossEntropyBackwardOp, cl, ct, cg, { rows, cols, ignoreIndex: -100 })];
      // softmax - onehot: softmax's error, absolute where p - 1 cancels.
      await compare(gpu, gb, cb, rel((8 + 4 * spread) * EPS, (8 + 4 * spread) * EPS), `crossEntropyBackward [${rows},${cols}]`);
      freeAll(gpu, gl, gt, gg, gf, gb);
    }),
    { seed: SEED, numRuns },
  );
}

/** rmsNorm. */
async function checkRmsNorm(gpu: WebGpuBackend, numRuns: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(rowsArb, colsArb, fc.constantFrom(1e-3, 1, 1e3), fc.nat(), async (rows, D, scale, seed) => {
      const [gx, cx] = both(gpu, f32s(rows * D, seed, (u) => u * scale));
      const [gw, cw] = both(gpu, f32s(D, seed + 1, (u) => 1 + u / 2));
      const [go, co] = [gpu.run(rmsNormOp, gx, gw, { rows, D, eps: 1e-6 }), cpu.run(rmsNormOp, cx, cw, { rows, D, eps: 1e-6 })];
      // The sum of squares (positive terms: relative error <= few eps) under inverseSqrt (2 ulp), then two products.
      await compare(gpu, go, co, rel(1e-5), `rmsNorm [${rows},${D}]`);
      freeAll(gpu, gx, gw, go);
    }),
    { seed: SEED, numRuns },
  );
}

describe("row kernels", () => {
  testWebGpu("reduceRows sum / max, f32 and i32", (gpu) => checkReduceRows(gpu, 50));

  testWebGpu("more than 65535 rows or batches: 2-D grids and split dispatches", async (gpu) => {
    const rows = 70_001;
    const [gx, cx] = both(gpu, f32s(rows * 3, 5));
    await compare(gpu, gpu.run(reduceRowsOp, "max", gx, rows, 3), cpu.run(reduceRowsOp, "max", cx, rows, 3), EXACT, "reduce max, 70001 rows");
    await compare(gpu, gpu.run(softmaxOp, gx, rows, 3, true), cpu.run(softmaxOp, cx, rows, 3, true), rel(1e-6, 1e-6), "log-softmax, 70001 rows");
    const g: MatmulGeometry = { batch: rows, M: 1, N: 3, K: 1, transA: false, transB: false, batchStrideA: 1, batchStrideB: 0 };
    await compare(gpu, gpu.run(matmulOp, gx, gx, g), cpu.run(matmulOp, cx, cx, g), EXACT, "matmul, batch 70001");
  });

  testWebGpu("softmax and log-softmax", (gpu) => checkSoftmax(gpu, 40));

  testWebGpu("crossEntropy forward and backward, with ignored rows", (gpu) => checkCrossEntropy(gpu, 30));

  testWebGpu("rmsNorm", (gpu) => checkRmsNorm(gpu, 30));
});

/**
 * matmul against the reference: batched, transA / transB, broadcast batch strides, edges that are
 * not multiples of any tile, and sizes in multiples of 4 often enough that the vec4 / quad
 * variants (which need them) run as well as their "tiled" fallback.
 */
async function checkMatmul(gpu: WebGpuBackend, numRuns: number, only: MatmulOnly = {}): Promise<void> {
  const dimArb = fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 10, max: 80 }), fc.integer({ min: 1, max: 40 }).map((d) => 4 * d));
  const K = fc.oneof(dimArb, fc.constantFrom(0, 300));
  await fc.assert(
    fc.asyncProperty(
      fc.record({ batch: fc.integer({ min: 1, max: 3 }), M: only.M ?? dimArb, N: only.N ?? dimArb, K: only.K ?? K }),
      only.transA ?? fc.boolean(),
      only.transB ?? fc.boolean(),
      fc.boolean(),
      fc.boolean(),
      fc.constantFrom(1e-10, 1, 1e10),
      fc.nat(),
      async ({ batch, M, N, K }, transA, transB, bcastA, bcastB, mag, seed) => {
        const g: MatmulGeometry = { batch, M, N, K, transA, transB, batchStrideA: bcastA ? 0 : M * K, batchStrideB: bcastB ? 0 : K * N };
        const a = f32s((bcastA ? 1 : batch) * M * K, seed, (u) => u * mag);
        const b = f32s((bcastB ? 1 : batch) * K * N, seed + 1);
        const [ga, ca] = both(gpu, a);
        const [gb, cb] = both(gpu, b);
        const [go, co] = [gpu.run(matmulOp, ga, gb, g), cpu.run(matmulOp, ca, cb, g)];
        // f32 accumulation of K products: error ~ sqrt(K) eps sum_k |a_ik b_kj| (random signs);
        // 4 sqrt(K) is a wide margin. The bound is per element: (|A| @ |B|)_ij from the cpu.
        const [aa, ab] = [cpu.upload(a.map(Math.abs)), cpu.upload(b.map(Math.abs))];
        const bound = await cpu.read(cpu.run(matmulOp, aa, ab, g));
        await compare(gpu, go, co, (_, i) => DENORMAL + 4 * Math.sqrt(K) * EPS * bound[i]!, `matmul ${gpu.matmulVariant} ${JSON.stringify(g)}`);
        freeAll(gpu, ga, gb, go);
      },
    ),
    { seed: SEED, numRuns },
  );
}

/** Arbitraries that narrow checkMatmul's geometry to one path. */
interface MatmulOnly {
  M?: fc.Arbitrary<number>;
  N?: fc.Arbitrary<number>;
  K?: fc.Arbitrary<number>;
  transA?: fc.Arbitrary<boolean>;
  transB?: fc.Arbitrary<boolean>;
}

/**
 * One row of x @ W^T (decoding): the matrix-vector kernel where K is a multiple of 4, the tiled
 * fallback elsewhere; N up to a few blocks of 8 x 64 columns, K up to 2048.
 */
const GEMV: MatmulOnly = {
  M: fc.constant(1),
  N: fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 500, max: 1100 })),
  K: fc.oneof(fc.integer({ min: 1, max: 64 }).map((d) => 4 * d), fc.constantFrom(0, 2048), fc.integer({ min: 1, max: 99 })),
  transA: fc.constant(false),
  transB: fc.constant(true),
};

/**
 * x @ W^T for each of `forwards` and dY @ W (its backward), W [V, D] in a chunked storage,
 * against the cpu reference: W, x [M, D] and dY [M, V] drawn from `seed`, `seed + 1`, `seed + 2`.
 */
async function checkChunkedMatmul(gpu: WebGpuBackend, [V, D, M]: [number, number, number], seed: number, forwards: [string, MatmulGeometry][]): Promise<void> {
  const tol = rel(1e-5, 1e-5);
  const w = f32s(V * D, seed);
  const [gw, cw] = [gpu.upload(w), cpu.upload(w)];
  const x = f32s(M * D, seed + 1);
  const [gx, cx] = [gpu.upload(x), cpu.upload(x)];
  for (const [what, g] of forwards) expectClose(await gpu.read(gpu.run(matmulOp, gx, gw, g)), await cpu.read(cpu.run(matmulOp, cx, cw, g)), tol, what);
  const dy = f32s(M * V, seed + 2);
  const [gd, cd] = [gpu.upload(dy), cpu.upload(dy)];
  const bwd: MatmulGeometry = { batch: 1, M, N: D, K: V, transA: false, transB: false, batchStrideA: 0, batchStrideB: 0 };
  expectClose(await gpu.read(gpu.run(matmulOp, gd, gw, bwd)), await cpu.read(cpu.run(matmulOp, cd, cw, bwd)), tol, "dY @ W");
}

/** A decode row against a vocabulary: the shape the matrix-vector kernel exists for. */
const DECODE_ROW: MatmulGeometry = { batch: 1, M: 1, N: 32000, K: 2048, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 };

describe("matmul", () => {
  testWebGpu("batched, transA / transB, broadcast batch strides, edges not multiples of the tile", (gpu) => checkMatmul(gpu, 60));

  testWebGpu("one row (the matrix-vector kernel, one lane per column block on a CPU adapter)", async (gpu) => {
    expect(matmulKernelKey(gpu, DECODE_ROW)).toMatch(/^matmul\.gemv\./);
    await checkMatmul(gpu, 40, GEMV);
  });

  test("one row with lanes splitting K and a tree reduction (the GPU form), 64 and 4 lanes", async (ctx) => {
    const shared = await webgpuOrSkip(ctx);
    for (const rowWorkgroup of [64, 4]) {
      const gpu = shared.withOptions({ rowWorkgroup, matmulVariant: "vec4" });
      try {
        expect(matmulKernelKey(gpu, DECODE_ROW)).toBe(`matmul.gemv.${rowWorkgroup}x4x${64 / rowWorkgroup}`);
        await checkMatmul(gpu, 25, GEMV);
      } finally {
        await gpu.destroy();
      }
    }
  });

  // Every other variant on a backend of its own: the adapter's default ran above on the shared
  // backend, and "quad" needs the subgroups feature.
  test("every other matmul variant against the reference", async (ctx) => {
    const shared = await webgpuOrSkip(ctx);
    const others = MATMUL_VARIANTS.filter((v) => v !== shared.matmulVariant && (v !== "quad" || shared.device.features.has("subgroups")));
    expect(others.length).toBeGreaterThan(0);
    for (const variant of others) {
      const gpu = shared.withOptions({ matmulVariant: variant });
      try {
        await checkMatmul(gpu, 30);
      } finally {
        await gpu.destroy();
      }
    }
  });
});

describe("timing", () => {
  testWebGpu("gpuTime sums the passes of work spread over several batches, and the work is done", async (gpu) => {
    const x = f32s(1000, 17);
    const gx = gpu.upload(x);
    let y = gx;
    const ms = await gpu.gpuTime(() => {
      // 300 dispatches: three batches of at most 128, each submitted in its own compute pass.
      for (let i = 0; i < 300; i++) {
        const next = gpu.unary(i % 2 ? "neg" : "copy", { storage: y, shape: [1000], strides: [1], offset: 0 });
        if (y !== gx) gpu.free(y);
        y = next;
      }
    });
    if (gpu.device.features.has("timestamp-query")) expect(ms).toBeGreaterThan(0);
    else expect(ms).toBeNull();
    await compare(gpu, y, cpu.upload(x), EXACT, "150 negations");
    freeAll(gpu, gx, y);
  });
});

describe("nn kernels", () => {
  testWebGpu("gather and scatterAdd (repeated ids accumulate in order)", async (gpu) => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 50 }), fc.integer({ min: 1, max: 300 }), fc.integer({ min: 0, max: 60 }), fc.nat(), async (V, D, N, seed) => {
        const ids = Int32Array.from(f32s(N, seed), (u) => Math.floor(((u + 1) / 2) * V));
        const [gt, ct] = both(gpu, f32s(V * D, seed + 1));
        const [gi, ci] = both(gpu, ids);
        const [go, co] = [gpu.run(gatherOp, gt, gi, { V, D }), cpu.run(gatherOp, ct, ci, { V, D })];
        await compare(gpu, go, co, EXACT, "gather");
        const grad = f32s(N * D, seed + 2);
        const [gg, cg] = both(gpu, grad);
        const [gs, cs] = [gpu.run(scatterAddOp, gg, gi, { V, D }), cpu.run(scatterAddOp, cg, ci, { V, D })];
        // A sequential f32 sum of the rows with one id: error <= count eps sum|grad| (bounded per
        // element by scattering |grad| on the cpu).
        const bound = await cpu.read(cpu.run(scatterAddOp, cpu.upload(grad.map(Math.abs)), ci, { V, D }));
        await compare(gpu, gs, cs, (_, i) => DENORMAL + N * EPS * bound[i]!, "scatterAdd");
        freeAll(gpu, gt, gi, go, gg, gs);
      }),
      { seed: SEED, numRuns: 30 },
    );
  });

  testWebGpu("gather: ids outside [0, V) give zero rows; scatterAdd skips them", async (gpu) => {
    const table = gpu.upload(Float32Array.from([1, 2, 3, 4]));
    const ids = gpu.upload(Int32Array.from([1, -1, 2, 0]));
    expect(Array.from(await gpu.read(gpu.run(gatherOp, table, ids, { V: 2, D: 2 })))).toEqual([3, 4, 0, 0, 0, 0, 1, 2]);
    const grad = gpu.upload(Float32Array.from([1, 1, 2, 2, 3, 3, 4, 4]));
    expect(Array.from(await gpu.read(gpu.run(scatterAddOp, grad, ids, { V: 2, D: 2 })))).toEqual([4, 4, 1, 1]);
  });

  testWebGpu("rope, forward and inverse, shared or per-batch tables", async (gpu) => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 20 }),
        fc.integer({ min: 1, max: 40 }).map((h) => 2 * h),
        fc.boolean(),
        fc.boolean(),
        fc.nat(),
        async (B, H, T, Dh, perBatch, inverse, seed) => {
          const Bc = perBatch ? B : 1;
          const angles = f32s((Bc * T * Dh) / 2, seed, (u) => u * 100);
          const [gc, cc] = both(gpu, angles.map(Math.cos));
          const [gs, cs] = both(gpu, angles.map(Math.sin));
          const [gx, cx] = both(gpu, f32s(B * H * T * Dh, seed + 1));
          const [go, co] = [gpu.run(ropeOp, gx, gc, gs, { B, H, T, Dh, Bc, inverse }), cpu.run(ropeOp, cx, cc, cs, { B, H, T, Dh, Bc, inverse })];
          // Two products and a sum per element: a few ulp of max(|x|) (cancellation in the sum).
          await compare(gpu, go, co, rel(4 * EPS, 4 * EPS), `rope B${B} H${H} T${T} Dh${Dh}`);
          freeAll(gpu, gc, gs, gx, go);
        },
      ),
      { seed: SEED, numRuns: 30 },
    );
  });

  testWebGpu("adamw step in place (param, m, v)", async (gpu) => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 3000 }), fc.integer({ min: 1, max: 1000 }), fc.nat(), async (n, step, seed) => {
        const h = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step };
        const [p, g, m, v] = [f32s(n, seed), f32s(n, seed + 1, (u) => u * 1e-2), f32s(n, seed + 2, (u) => u * 1e-3), f32s(n, seed + 3, (u) => u * u * 1e-4)];
        const bound = adamwErrorBound(p, g, m, v, h);
        const [[gp, cp], [gg, cg], [gm, cm], [gv, cv]] = [p, g, m, v].map((a) => both(gpu, a));
        gpu.run(adamwOp, gp!, gg!, gm!, gv!, h);
        cpu.run(adamwOp, cp!, cg!, cm!, cv!, h);
        const within = (b: Float64Array): Tol => (_, i) => 4 * b[i]!;
        await compare(gpu, gp!, cp!, within(bound.p), "adamw param");
        await compare(gpu, gm!, cm!, within(bound.m), "adamw m");
        await compare(gpu, gv!, cv!, within(bound.v), "adamw v");
        freeAll(gpu, gp!, gg!, gm!, gv!);
      }),
      { seed: SEED, numRuns: 20 },
    );
  });
});

/**
 * First-order f32 error of one AdamW step per element: each operation rounds (<= 1 ulp, 2.5 for
 * division and sqrt), and errors propagate through the formula. m = b1 m + (1 - b1) g may cancel,
 * so its error is relative to the terms, not to m; the update divides by sqrt(vhat) + eps, which
 * magnifies m's error where v is small.
 */
function adamwErrorBound(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, h: AdamWStep) {
  const [bc1, bc2] = [1 - h.beta1 ** h.step, 1 - h.beta2 ** h.step];
  const out = { p: new Float64Array(p.length), m: new Float64Array(p.length), v: new Float64Array(p.length) };
  for (let i = 0; i < p.length; i++) {
    const m1 = h.beta1 * m[i]! + (1 - h.beta1) * g[i]!;
    const v1 = h.beta2 * v[i]! + (1 - h.beta2) * g[i]! ** 2;
    const dm = 3 * EPS * (Math.abs(h.beta1 * m[i]!) + Math.abs((1 - h.beta1) * g[i]!));
    const dv = 4 * EPS * v1;
    const root = Math.sqrt(v1 / bc2);
    const s = root + h.eps;
    const u = m1 / bc1 / s;
    const du = dm / bc1 / s + (Math.abs(u) * (dv / bc2)) / (2 * Math.max(root, 1e-30) * s) + 8 * EPS * Math.abs(u);
    out.m[i] = DENORMAL + dm;
    out.v[i] = DENORMAL + dv;
    out.p[i] = DENORMAL + 2 * EPS * Math.abs(p[i]!) + h.lr * (du + 2 * EPS * (Math.abs(u) + h.weightDecay * Math.abs(p[i]!)));
  }
  return out;
}

/**
 * Attention geometries: GQA groups, Tk >= Tq (a KV cache), head dims around the 64-wide blocks:
 * small ones (1..16, the quad forward's smallest, 16), and 64 and 128 (the checkpoints' sizes,
 * above one block). Each multiple of 16 is a separately compiled quad kernel, seconds on a CPU
 * adapter, so no other is drawn.
 */
const geometryArb = fc
  .record({
    B: fc.integer({ min: 1, max: 2 }),
    Hkv: fc.integer({ min: 1, max: 2 }),
    group: fc.integer({ min: 1, max: 3 }),
    Tq: fc.integer({ min: 1, max: 20 }),
    extra: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 80 })),
    Dh: fc.oneof(fc.integer({ min: 1, max: 16 }), fc.constantFrom(64, 128)),
    causal: fc.boolean(),
    window: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 10 })),
    masked: fc.boolean(),
  })
  .map((r) => ({ ...r, g: { B: r.B, H: r.Hkv * r.group, Hkv: r.Hkv, Tq: r.Tq, Tk: r.Tq + r.extra, Dh: r.Dh, scale: 1 / Math.sqrt(r.Dh), causal: r.causal, window: r.window } as AttentionGeometry }));

/** fused forward and flash backward vs the reference (causal, window, padding, GQA). */
async function checkAttention(gpu: WebGpuBackend, numRuns: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(geometryArb, fc.nat(), async ({ g, masked }, seed) => {
      const { B, H, Hkv, Tq, Tk, Dh } = g;
      const [gq, cq] = both(gpu, f32s(B * H * Tq * Dh, seed, (u) => u * 2));
      const [gk, ck] = both(gpu, f32s(B * Hkv * Tk * Dh, seed + 1, (u) => u * 2));
      const [gv, cv] = both(gpu, f32s(B * Hkv * Tk * Dh, seed + 2));
      const mask = masked ? both(gpu, f32s(B * Tk, seed + 3, (u) => (u > -0.6 ? 1 : 0))) : null;
      const gf = gpu.run(attentionOp, { q: gq, k: gk, v: gv, keyMask: mask?.[0] ?? null }, g);
      const cf = cpu.run(attentionOp, { q: cq, k: ck, v: cv, keyMask: mask?.[1] ?? null }, g);
      // Scores are dot products of Dh terms (sqrt(Dh) eps), exp adds 3 + 2|s| ulp, and the output
      // is a convex combination of v: absolute error of a few hundred eps at these magnitudes.
      const tol = rel(1e-5, 64 * Math.sqrt(Dh) * EPS);
      await compare(gpu, gf.out, cf.out, tol, `attention out ${JSON.stringify(g)}`);
      await compare(gpu, gf.lse, cf.lse, tol, `attention lse ${JSON.stringify(g)}`);
      const [gd, cd] = both(gpu, f32s(B * H * Tq * Dh, seed + 4));
      const gb = gpu.run(attentionBackwardOp, { q: gq, k: gk, v: gv, keyMask: mask?.[0] ?? null, out: gf.out, dOut: gd, lse: gf.lse }, g);
      const cb = cpu.run(attentionBackwardOp, { q: cq, k: ck, v: cv, keyMask: mask?.[1] ?? null, out: cf.out, dOut: cd, lse: cf.lse }, g);
      // Gradients sum over up to Tk (dq) or group * Tq (dk, dv) terms of the forward's accuracy.
      const gtol = rel(1e-4, 256 * Math.sqrt(Dh * (Tk + H * Tq)) * EPS);
      await compare(gpu, gb.dq, cb.dq, gtol, `attention dq ${JSON.stringify(g)}`);
      await compare(gpu, gb.dk, cb.dk, gtol, `attention dk ${JSON.stringify(g)}`);
      await compare(gpu, gb.dv, cb.dv, gtol, `attention dv ${JSON.stringify(g)}`);
      freeAll(gpu, gq, gk, gv, gd, gf.out, gf.lse, gb.dq, gb.dk, gb.dv, ...(mask ? [mask[0]] : []));
    }),
    { seed: SEED, numRuns },
  );
}

describe("attention", () => {
  testWebGpu("fused forward and flash backward vs the reference (causal, window, padding, GQA)", (gpu) => checkAttention(gpu, 40));

  testWebGpu("head dim above the kernel's limit throws DeviceLimitError", async (gpu) => {
    const q = gpu.zeros("f32", 512);
    const g: AttentionGeometry = { B: 1, H: 1, Hkv: 1, Tq: 1, Tk: 1, Dh: 512, scale: 1, causal: true, window: 0 };
    expect(() => gpu.run(attentionOp, { q, k: q, v: q, keyMask: null }, g)).toThrow(DeviceLimitError);
    gpu.free(q);
  });
});

describeWebGpu("row kernels and attention with GPU-sized workgroups (256 per row, 64 per attention block)", { rowWorkgroup: 256, attentionVariant: "rows" }, (testOn) => {
  // This adapter may default to smaller workgroups (SwiftShader: one subgroup per row) and the
  // "quad" attention forward; these runs check the variants a GPU uses, with fewer cases.
  const checks: [string, (gpu: WebGpuBackend, numRuns: number) => Promise<void>][] = [
    ["reduceRows", checkReduceRows],
    ["softmax", checkSoftmax],
    ["crossEntropy", checkCrossEntropy],
    ["rmsNorm", checkRmsNorm],
    ["attention", checkAttention],
  ];
  for (const [name, check] of checks) testOn(name, (gpu) => check(gpu, 6));
});

// ---- large tensors: chunked storages ----

describeWebGpu("chunked storages (per-binding limit lowered to 4 KB = 1024 f32)", { maxBindingBytes: 4096 }, (testOn) => {
  testOn("upload / read across chunk boundaries, zeros, fill", async (gpu) => {
    const data = f32s(5000, 7);
    const s = gpu.upload(data);
    expect(await gpu.read(s)).toEqual(data);
    expect(await gpu.read(s, 1000, 1500)).toEqual(data.subarray(1000, 2500));
    gpu.fill(s, 3);
    expect((await gpu.read(s, 1020, 10)).every((v) => v === 3)).toBe(true);
    const z = gpu.zeros("i32", 3000);
    expect((await gpu.read(z)).every((v) => v === 0)).toBe(true);
    freeAll(gpu, s, z);
  });

  testOn("gather from a chunked table whose rows straddle chunks", async (gpu) => {
    const [V, D] = [100, 37];
    const table = f32s(V * D, 8);
    const ids = Int32Array.from([0, 27, 28, 99, 55, 27, 83]);
    const [gt, ct] = [gpu.upload(table), cpu.upload(table)];
    const [gi, ci] = [gpu.upload(ids), cpu.upload(ids)];
    expectClose(await gpu.read(gpu.run(gatherOp, gt, gi, { V, D })), await cpu.read(cpu.run(gatherOp, ct, ci, { V, D })), EXACT, "gather chunked");
  });

  testOn("matmul with a chunked B: x @ W^T (lm_head) and dY @ W (its backward)", async (gpu) => {
    // W [150, 37]: 5550 floats in 6 chunks; rows straddle every boundary.
    const [V, D, M] = [150, 37, 5];
    await checkChunkedMatmul(gpu, [V, D, M], 9, [["x @ W^T", { batch: 2, M: M - 3, N: V, K: D, transA: false, transB: true, batchStrideA: (M - 3) * D, batchStrideB: 0 }]]);
  });

  testOn("matmul with a chunked B whose rows are multiples of 4 (vec4 / quad pieces, tiled where a piece is unaligned)", async (gpu) => {
    const [V, D, M] = [150, 36, 6];
    const fwd: MatmulGeometry = { batch: 1, M, N: V, K: D, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 };
    await checkChunkedMatmul(gpu, [V, D, M], 14, [
      ["x @ W^T", fwd],
      ["one row of x @ W^T (matrix-vector pieces)", { ...fwd, M: 1 }],
    ]);
  });

  testOn("elementwise ops and assign on chunked operands", async (gpu) => {
    const shape = [50, 70];
    const a = f32s(3500, 12);
    const b = f32s(70, 13);
    const [ga, ca] = [gpu.upload(a), cpu.upload(a)];
    const [gb, cb] = [gpu.upload(b), cpu.upload(b)];
    const full = (s: Storage): View => ({ storage: s, shape, strides: [70, 1], offset: 0 });
    const t = (s: Storage): View => ({ storage: s, shape: [70, 50], strides: [1, 70], offset: 0 });
    const row = (s: Storage): View => ({ storage: s, shape, strides: [0, 1], offset: 0 });
    expectClose(await gpu.read(gpu.unary("copy", t(ga))), await cpu.read(cpu.unary("copy", t(ca))), EXACT, "transposed copy");
    expectClose(await gpu.read(gpu.binary("mul", full(ga), row(gb))), await cpu.read(cpu.binary("mul", full(ca), row(cb))), EXACT, "broadcast mul");
    // Assign a broadcast row into rows 10..39 of the chunked storage.
    const slice = (s: Storage): View => ({ storage: s, shape: [30, 70], strides: [70, 1], offset: 700 });
    const rows = (s: Storage): View => ({ storage: s, shape: [30, 70], strides: [0, 1], offset: 0 });
    gpu.assign(slice(ga), rows(gb));
    cpu.assign(slice(ca), rows(cb));
    expectClose(await gpu.read(ga), await cpu.read(ca), EXACT, "assign into chunked");
  });

  testOn("other kernels reject chunked storages; impossible sizes throw DeviceLimitError", async (gpu) => {
    const big = gpu.zeros("f32", 2000);
    expect(() => gpu.run(softmaxOp, big, 2, 1000, false)).toThrow(/softmax: x of 8000 bytes exceeds the per-binding limit of 4096 bytes/);
    expect(() => gpu.run(reduceRowsOp, "sum", big, 2, 1000)).toThrow(DeviceLimitError);
    const small2 = gpu.zeros("f32", 100);
    expect(() => gpu.run(matmulOp, big, small2, { batch: 1, M: 20, N: 1, K: 100, transA: false, transB: false, batchStrideA: 0, batchStrideB: 0 })).toThrow(
      DeviceLimitError,
    );
    expect(() => gpu.run(matmulOp, small2, small2, { batch: 1, M: 100, N: 100, K: 1, transA: true, transB: false, batchStrideA: 0, batchStrideB: 0 })).toThrow(
      /matmul: output of 40000 bytes/,
    );
    expect(() => gpu.zeros("f32", 2 ** 40)).toThrow(DeviceLimitError);
    freeAll(gpu, big, small2);
  });

  testOn("a kernel that fails to compile becomes an Error naming it at the next sync", async (gpu) => {
    const broken = kernel("test.broken", () => ({
      params: [],
      buffers: [{ name: "y", type: "f32", access: "read_write" }],
      body: () => "@compute @workgroup_size(1) fn main() { y[0] = undefined_name; }",
    }));
    const s = gpu.zeros("f32", 4);
    gpu.dispatch(broken, {}, [(s as WebGpuStorage).chunks[0]!.buf], 1);
    await expect(gpu.sync()).rejects.toThrow(/test\.broken/);
    await gpu.sync();
  });
});

// ---- memory and lifetime ----

describe("memory", () => {
  testWebGpu("200 alloc / compute / free cycles leave liveBytes and the pool flat", async (gpu) => {
    await gpu.sync();
    const before = gpu.liveBytes();
    let allocated = 0;
    for (let i = 0; i < 200; i++) {
      const x = gpu.upload(f32s(1000 + (i % 7), i));
      const y = gpu.unary("exp", { storage: x, shape: [x.numel], strides: [1], offset: 0 });
      const z = gpu.run(reduceRowsOp, "sum", y, 1, y.numel);
      freeAll(gpu, x, y, z);
      if (i === 10) allocated = gpu.memoryStats().allocatedBytes;
    }
    await gpu.sync();
    expect(gpu.liveBytes()).toBe(before);
    expect(gpu.memoryStats().allocatedBytes).toBe(allocated);
  });

  testWebGpu("a freed buffer reused by an upload does not change results of unsubmitted work", async (gpu) => {
    const x = gpu.upload(Float32Array.from([1, 2, 3]));
    const y = gpu.unary("neg", { storage: x, shape: [3], strides: [1], offset: 0 });
    gpu.free(x);
    // Same size class: the pool hands x's buffer out again, while y's dispatch is unsubmitted.
    const w = gpu.upload(Float32Array.from([7, 7, 7]));
    expect(Array.from(await gpu.read(y))).toEqual([-1, -2, -3]);
    freeAll(gpu, y, w);
  });

  testWebGpu("using a freed storage throws DisposedError", async (gpu) => {
    const x = gpu.upload(Float32Array.from([1]));
    gpu.free(x);
    expect(() => gpu.free(x)).toThrow(DisposedError);
    await expect(gpu.read(x)).rejects.toThrow(DisposedError);
    expect(() => gpu.unary("exp", { storage: x, shape: [1], strides: [1], offset: 0 })).toThrow(DisposedError);
    expect(() => gpu.run(softmaxOp, x, 1, 1, false)).toThrow(DisposedError);
  });

  testWebGpu("views reaching outside their storage throw ShapeError", async (gpu) => {
    const x = gpu.zeros("f32", 4);
    expect(() => gpu.unary("exp", { storage: x, shape: [2, 3], strides: contiguousStrides([2, 3]), offset: 0 })).toThrow(ShapeError);
    gpu.free(x);
  });

  testWebGpu("one pipeline per shader key, whatever the sizes", async (gpu) => {
    const run = (n: number) => {
      const x = gpu.zeros("f32", n);
      gpu.free(gpu.run(softmaxOp, x, 1, n, true));
      gpu.free(x);
    };
    run(3);
    const compiled = gpu.compiledKernels();
    for (const n of [5, 700, 4000]) run(n);
    expect(gpu.compiledKernels()).toBe(compiled);
  });
});
