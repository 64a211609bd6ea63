import type { HostArray } from "../../tensor/dtype.ts";
import type { CrossEntropyGeometry } from "../../tensor/ops/cross_entropy.ts";
import { crossEntropyBackwardOp, crossEntropyOp } from "../../tensor/ops/cross_entropy.ts";
import { rmsNormOp } from "../../tensor/ops/rmsnorm.ts";
import { softmaxOp } from "../../tensor/ops/softmax.ts";
import { crossEntropyBackwardOnHost, crossEntropyBackwardRef, crossEntropyOnHost, crossEntropyRef, crossEntropyTarget } from "../cross_entropy.ts";
import { registerKernel } from "../registry.ts";
import { rmsNormOnHost, rmsNormRef } from "../rmsnorm.ts";
import { softmaxOnHost, softmaxRef } from "../softmax.ts";
import type { WasmBackend } from "./backend.ts";
import type { Code, Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, expF32x4, f32, f32x4, forRange, get, i32, ifElse, inc, seq, set, sumLanes, v128, whileLoop } from "./module.ts";
import { f32Bits } from "./pool.ts";

/**
 * The row kernels of the `wasm` device (one WebAssembly SIMD module, f32, contiguous rows), rows
 * split round-robin between threads (each row one thread's, in one order):
 *
 * - row_stats(x, stats, rows, cols, tid, threads): stats[r] = (m, s), m = max_c x[r, c] and
 *   s = sum_c exp(x[r, c] - m), the stable log-sum-exp's parts (logsumexp = m + log s). The caller
 *   takes the one log per row.
 * - row_apply(x, stats, out, rows, cols, mode, tid, threads), with stats[r] = (m, a) as the
 *   caller prepared them: mode 0, out = exp(x - m) a (softmax with a = 1 / s; the cross-entropy
 *   gradient's softmax term with a = gradLoss / s); mode 1, out = x - m - a (log-softmax, a = log s).
 * - rmsnorm(x, w, out, rows, D, epsBits, tid, threads): out = x rsqrt(mean(x^2) + eps) w
 *   (src/kernels/rmsnorm.ts), eps given as its f32 bits.
 *
 * They run softmax, log-softmax, cross-entropy forward and backward and RMSNorm for f32 operands
 * in the device's memory (registered below); other dtypes run the references.
 *
 * Sums run in 4 vector accumulators (16 interleaved partial sums) and exp is Cephes' expf
 * (expF32x4): f32 results within a few ulps times the row length's square root of the
 * references, which sum in doubles.
 */

const c = i32.const;

/** Locals and loops over one row of `cols` f32 at byte pointer `row`: 16 at a time, then 1 at a time. */
export function rowLoops(fn: FunctionBuilder) {
  const [k, end16] = [fn.local(T.i32), fn.local(T.i32)];
  return {
    k,
    /** body16(offset) for each 16-element block (offset in bytes within the block: 0, 16, 32, 48), then body1 per remaining element; k counts elements. */
    over: (cols: Local, body16: (q: number) => Code, step16: Code, body1: Code, step1: Code) =>
      seq(
        set(k, c(0)),
        set(end16, i32.and(get(cols), c(-16))),
        whileLoop(i32.lt_s(get(k), get(end16)), seq(...[0, 1, 2, 3].map(body16), step16, inc(k, c(16)))),
        whileLoop(i32.lt_s(get(k), get(cols)), seq(body1, step1, inc(k, c(1)))),
      ),
  };
}

/** Sum of the four lanes of each of four vectors. */
export const hsum = (vs: Local[]) => {
  const all = f32x4.add(f32x4.add(get(vs[0]!), get(vs[1]!)), f32x4.add(get(vs[2]!), get(vs[3]!)));
  return (t: Local) => seq(set(t, all), sumLanes(get(t)));
};

function rowStats(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("row_stats", new Array(6).fill(T.i32));
  const [x, stats, rows, cols, tid, threads] = fn.params as Local[] as Local[] & { length: 6 };
  const [r, p] = [fn.local(T.i32), fn.local(T.i32)];
  const acc = [0, 1, 2, 3].map(() => fn.local(T.v128));
  const [e1, e2, e3, t] = [fn.local(T.v128), fn.local(T.v128), fn.local(T.v128), fn.local(T.v128)];
  const [m, s, tail] = [fn.local(T.f32), fn.local(T.f32), fn.local(T.f32)];
  const L = rowLoops(fn);
  const load = (q: number) => v128.load(get(p), 16 * q);
  const mv = () => f32x4.splat(get(m));
  const exp = (v: Code) => expF32x4(v, e1, e2, e3);
  const body = forRange(
    r,
    get(tid!),
    get(rows!),
    get(threads!),
    seq(
      // max
      ...acc.map((a) => set(a, f32x4.splat(f32.const(-Infinity)))),
      set(p, i32.add(get(x!), i32.shl(i32.mul(get(r), get(cols!)), c(2)))),
      L.over(cols!, (q) => set(acc[q]!, f32x4.max(get(acc[q]!), load(q))), inc(p, c(64)), set(acc[0]!, f32x4.max(get(acc[0]!), v128.load32_splat(get(p)))), inc(p, c(4))),
      set(t, f32x4.max(f32x4.max(get(acc[0]!), get(acc[1]!)), f32x4.max(get(acc[2]!), get(acc[3]!)))),
      set(m, f32x4.extract_lane(f32x4.max(f32x4.max(get(t), f32x4.splat(f32x4.extract_lane(get(t), 1))), f32x4.max(f32x4.splat(f32x4.extract_lane(get(t), 2)), f32x4.splat(f32x4.extract_lane(get(t), 3)))), 0)),
      // sum of exp(x - m): 16 partial sums, and the tail's own
      ...acc.map((a) => set(a, v128.zero())),
      set(tail, f32.const(0)),
      set(p, i32.add(get(x!), i32.shl(i32.mul(get(r), get(cols!)), c(2)))),
      L.over(
        cols!,
        (q) => set(acc[q]!, f32x4.add(get(acc[q]!), exp(f32x4.sub(load(q), mv())))),
        inc(p, c(64)),
        set(tail, f32.add(get(tail), f32x4.extract_lane(exp(f32x4.sub(v128.load32_splat(get(p)), mv())), 0))),
        inc(p, c(4)),
      ),
      set(s, f32.add(hsum(acc)(t), get(tail))),
      f32.store(i32.add(get(stats!), i32.shl(get(r), c(3))), get(m)),
      f32.store(i32.add(get(stats!), i32.shl(get(r), c(3))), get(s), 4),
    ),
  );
  return { fn, body };
}

function rowApply(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("row_apply", new Array(8).fill(T.i32));
  const [x, stats, out, rows, cols, mode, tid, threads] = fn.params as Local[] as Local[] & { length: 8 };
  const [r, p, o] = [fn.local(T.i32), fn.local(T.i32), fn.local(T.i32)];
  const [mv, av, e1, e2, e3, v] = Array.from({ length: 6 }, () => fn.local(T.v128));
  const L = rowLoops(fn);
  /** The op on one vector (loaded into v): exp(v - m) a, or v - m - a. */
  const apply = (log: boolean) => (log ? f32x4.sub(f32x4.sub(get(v), get(mv)), get(av)) : f32x4.mul(expF32x4(f32x4.sub(get(v), get(mv)), e1, e2, e3), get(av)));
  const pass = (log: boolean) =>
    L.over(
      cols!,
      (q) => seq(set(v, v128.load(get(p), 16 * q)), v128.store(get(o), apply(log), 16 * q)),
      seq(inc(p, c(64)), inc(o, c(64))),
      seq(set(v, v128.load32_splat(get(p))), f32.store(get(o), f32x4.extract_lane(apply(log), 0))),
      seq(inc(p, c(4)), inc(o, c(4))),
    );
  const body = forRange(
    r,
    get(tid!),
    get(rows!),
    get(threads!),
    seq(
      set(mv, v128.load32_splat(i32.add(get(stats!), i32.shl(get(r), c(3))))),
      set(av, v128.load32_splat(i32.add(get(stats!), i32.shl(get(r), c(3))), 4)),
      set(p, i32.add(get(x!), i32.shl(i32.mul(get(r), get(cols!)), c(2)))),
      set(o, i32.add(get(out!), i32.shl(i32.mul(get(r), get(cols!)), c(2)))),
      ifElse(get(mode!), pass(true), pass(false)),
    ),
  );
  return { fn, body };
}

function rmsNorm(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("rmsnorm", new Array(8).fill(T.i32));
  const [x, w, out, rows, D, epsBits, tid, threads] = fn.params as Local[] as Local[] & { length: 8 };
  const [r, p, o, pw] = [fn.local(T.i32), fn.local(T.i32), fn.local(T.i32), fn.local(T.i32)];
  const acc = [0, 1, 2, 3].map(() => fn.local(T.v128));
  const [t, inv] = [fn.local(T.v128), fn.local(T.v128)];
  const [tail, sumSq] = [fn.local(T.f32), fn.local(T.f32)];
  const L = rowLoops(fn);
  const sq = (q: number) => seq(set(t, v128.load(get(p), 16 * q)), set(acc[q]!, f32x4.add(get(acc[q]!), f32x4.mul(get(t), get(t)))));
  const body = forRange(
    r,
    get(tid!),
    get(rows!),
    get(threads!),
    seq(
      ...acc.map((a) => set(a, v128.zero())),
      set(tail, f32.const(0)),
      set(p, i32.add(get(x!), i32.shl(i32.mul(get(r), get(D!)), c(2)))),
      L.over(D!, sq, inc(p, c(64)), set(tail, f32.add(get(tail), f32.mul(f32.load(get(p)), f32.load(get(p))))), inc(p, c(4))),
      set(sumSq, f32.add(hsum(acc)(t), get(tail))),
      // inv = 1 / sqrt(sumSq / D + eps), as a vector
      set(inv, f32x4.div(f32x4.splat(f32.const(1)), f32x4.sqrt(f32x4.splat(f32.add(f32.div(get(sumSq), f32.convert_i32_s(get(D!))), f32.reinterpret_i32(get(epsBits!))))))),
      set(p, i32.add(get(x!), i32.shl(i32.mul(get(r), get(D!)), c(2)))),
      set(o, i32.add(get(out!), i32.shl(i32.mul(get(r), get(D!)), c(2)))),
      set(pw, get(w!)),
      L.over(
        D!,
        (q) => v128.store(get(o), f32x4.mul(f32x4.mul(v128.load(get(p), 16 * q), get(inv)), v128.load(get(pw), 16 * q)), 16 * q),
        seq(inc(p, c(64)), inc(o, c(64)), inc(pw, c(64))),
        f32.store(get(o), f32.mul(f32.mul(f32.load(get(p)), f32x4.extract_lane(get(inv), 0)), f32.load(get(pw)))),
        seq(inc(p, c(4)), inc(o, c(4)), inc(pw, c(4))),
      ),
    ),
  );
  return { fn, body };
}

/** The row module: row_stats, row_apply, rmsnorm. */
export function rowsModule(shared: boolean): Uint8Array {
  return buildModule(shared, [rowStats(), rowApply(), rmsNorm()]);
}

/**
 * row_stats over x [rows, cols] into a temporary (m, s) per row (max, sum of exp(x - m)), then
 * `then(stats, threads)`; the temporary is released after.
 */
function withRowStats(wasm: WasmBackend, x: HostArray, rows: number, cols: number, then: (stats: HostArray, threads: number) => void): void {
  if (rows * cols === 0) return;
  const stats = wasm.allocate("f32", 2 * rows);
  try {
    const threads = wasm.rowThreads(rows, cols);
    wasm.call("row_stats", [x.byteOffset, stats.byteOffset, rows, cols], threads);
    then(stats, threads);
  } finally {
    wasm.release(stats);
  }
}

/**
 * The two-pass row kernels: each row's (m, s), then row_apply writes `out` from (m, a(s, r))
 * with `mode` (0: exp(x - m) a, 1: x - m - a).
 */
function rowKernels(wasm: WasmBackend, x: HostArray, out: HostArray, rows: number, cols: number, a: (s: number, r: number) => number, mode: number): void {
  withRowStats(wasm, x, rows, cols, (stats, threads) => {
    for (let r = 0; r < rows; r++) stats[2 * r + 1] = a(stats[2 * r + 1]!, r);
    wasm.call("row_apply", [x.byteOffset, stats.byteOffset, out.byteOffset, rows, cols, mode], threads);
  });
}

/**
 * Cross-entropy on the row kernels: targets are checked first (the reference's RangeError);
 * loss = m + log s - z_t; the gradient is softmax * gradLoss from row_apply (a = gradLoss / s, 0
 * for ignored rows), then gradLoss subtracted at each target. `gradLoss` null: the forward.
 */
function crossEntropyKernel(wasm: WasmBackend, logits: HostArray, targets: Int32Array, gradLoss: HostArray | null, out: HostArray, g: CrossEntropyGeometry): void {
  const { rows, cols, ignoreIndex } = g;
  if (!wasm.ownF32(gradLoss ? [logits, gradLoss, out] : [logits, out])) {
    if (gradLoss) crossEntropyBackwardRef(logits, targets, gradLoss, out, g);
    else crossEntropyRef(logits, targets, out, g);
    return;
  }
  const t = Array.from({ length: rows }, (_, r) => crossEntropyTarget(targets, r, cols, ignoreIndex));
  if (gradLoss === null) {
    // One value per row: the stats pass alone, then the loss here.
    withRowStats(wasm, logits, rows, cols, (stats) => {
      for (let r = 0; r < rows; r++) {
        const tr = t[r]!;
        out[r] = tr === null ? 0 : stats[2 * r]! + Math.log(stats[2 * r + 1]!) - logits[r * cols + tr]!;
      }
    });
    return;
  }
  rowKernels(wasm, logits, out, rows, cols, (s, r) => (t[r] === null ? 0 : gradLoss[r]! / s), 0);
  for (let r = 0; r < rows; r++) {
    const tr = t[r];
    if (tr !== null) out[r * cols + tr]! -= gradLoss[r]!;
  }
}

registerKernel(
  softmaxOp,
  "wasm",
  softmaxOnHost((wasm: WasmBackend, x, out, rows, cols, log) => {
    if (!wasm.ownF32([x, out])) return softmaxRef(x, out, rows, cols, log);
    rowKernels(wasm, x, out, rows, cols, (s) => (log ? Math.log(s) : 1 / s), log ? 1 : 0);
  }),
);
registerKernel(crossEntropyOp, "wasm", crossEntropyOnHost((wasm: WasmBackend, logits, targets, out, g) => crossEntropyKernel(wasm, logits, targets, null, out, g)));
registerKernel(crossEntropyBackwardOp, "wasm", crossEntropyBackwardOnHost((wasm: WasmBackend, ...args) => crossEntropyKernel(wasm, ...args)));
registerKernel(
  rmsNormOp,
  "wasm",
  rmsNormOnHost((wasm: WasmBackend, x, weight, out, g) => {
    if (!wasm.ownF32([x, weight, out])) return rmsNormRef(x, weight, out, g);
    wasm.call("rmsnorm", [x.byteOffset, weight.byteOffset, out.byteOffset, g.rows, g.D, f32Bits(g.eps)], wasm.rowThreads(g.rows, g.D));
  }),
);
