import type { HostArray } from "../../tensor/dtype.ts";
import type { ReduceOp } from "../../tensor/ops/reduce.ts";
import { reduceRowsOp } from "../../tensor/ops/reduce.ts";
import { reduceRowsOnHost, reduceRowsRef } from "../reduce.ts";
import { registerKernel } from "../registry.ts";
import type { WasmBackend } from "./backend.ts";
import type { Code, Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, f32, f32x4, forEachUnit, get, i32, inc, seq, set, v128 } from "./module.ts";
import { hsum, rowLoops } from "./rows.wasm.ts";

/**
 * Row reductions on the `wasm` device (one WebAssembly SIMD module, f32, contiguous rows; the
 * reduction every sum and max over axes becomes, src/kernels/reduce.ts):
 *   reduce_sum(x, out, rows, cols, tid, threads): out[r] = sum_c x[r, c] (0 for an empty row);
 *   reduce_max(...): out[r] = max_c x[r, c] (NaN if any is, +0 over -0, as Math.max).
 * Rows are split round-robin between threads. Sums run in 16 interleaved partial sums and the
 * tail's own (the reference sums in doubles): within a few ulp times sqrt(cols) of sum |x|;
 * max is exact.
 */

const c = i32.const;

function reduceKernel(op: ReduceOp): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder(`reduce_${op}`, new Array(6).fill(T.i32));
  const [x, out, rows, cols, tid, threads] = fn.params as Local[] as Local[] & { length: 6 };
  const [r, p] = [fn.local(T.i32), fn.local(T.i32)];
  const acc = [0, 1, 2, 3].map(() => fn.local(T.v128));
  const t = fn.local(T.v128);
  const tail = fn.local(T.f32);
  const L = rowLoops(fn);
  const sum = op === "sum";
  const combine = (a: Code, b: Code) => (sum ? f32x4.add(a, b) : f32x4.max(a, b));
  const result = sum
    ? f32.add(hsum(acc)(t), get(tail))
    : seq(set(t, f32x4.max(f32x4.max(get(acc[0]!), get(acc[1]!)), f32x4.max(get(acc[2]!), get(acc[3]!)))), f32x4.extract_lane(f32x4.max(f32x4.max(get(t), f32x4.splat(f32x4.extract_lane(get(t), 1))), f32x4.max(f32x4.splat(f32x4.extract_lane(get(t), 2)), f32x4.splat(f32x4.extract_lane(get(t), 3)))), 0));
  const body = forEachUnit(
    r,
    get(rows!),
    tid!,
    threads!,
    seq(
      ...acc.map((a) => set(a, sum ? v128.zero() : f32x4.splat(f32.const(-Infinity)))),
      set(tail, f32.const(0)),
      set(p, i32.add(get(x!), i32.shl(i32.mul(get(r), get(cols!)), c(2)))),
      L.over(
        cols!,
        (q) => set(acc[q]!, combine(get(acc[q]!), v128.load(get(p), 16 * q))),
        inc(p, c(64)),
        sum ? set(tail, f32.add(get(tail), f32.load(get(p)))) : set(acc[0]!, f32x4.max(get(acc[0]!), v128.load32_splat(get(p)))),
        inc(p, c(4)),
      ),
      f32.store(i32.add(get(out!), i32.shl(get(r), c(2))), result),
    ),
  );
  return { fn, body };
}

/** The module: reduce_sum, reduce_max. */
export function reduceModule(shared: boolean): Uint8Array {
  return buildModule(shared, [reduceKernel("sum"), reduceKernel("max")]);
}

/** Export names of the module's kernels. */
export const REDUCE_KERNELS = ["reduce_sum", "reduce_max"] as const;

/**
 * reduceRowsRef on the device for f32 arrays in its memory (else the reference, which also
 * gives empty rows their sum 0 or their ShapeError for max), after reduceRowsOnHost's checks.
 */
function reduceKernelOnDevice(wasm: WasmBackend, op: ReduceOp, x: HostArray, out: HostArray, rows: number, cols: number): void {
  if (cols === 0 || !wasm.ownF32([x, out])) return reduceRowsRef(op, x, out, rows, cols);
  if (rows === 0) return;
  wasm.call(`reduce_${op}`, [x.byteOffset, out.byteOffset, rows, cols], wasm.rowThreads(rows, cols));
}

registerKernel(reduceRowsOp, "wasm", reduceRowsOnHost(reduceKernelOnDevice));
