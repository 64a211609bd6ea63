import type { HostArray } from "../../tensor/dtype.ts";
import type { EmbeddingGeometry } from "../../tensor/ops/embedding.ts";
import { gatherOp, scatterAddOp } from "../../tensor/ops/embedding.ts";
import { gatherOnHost, gatherRef, scatterAddOnHost, scatterAddRef } from "../embedding.ts";
import { registerKernel } from "../registry.ts";
import type { WasmBackend } from "./backend.ts";
import type { Code, Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, f32, f32x4, forEachUnit, forRange, get, i32, ifElse, inc, memoryCopy, seq, set, v128, whileLoop } from "./module.ts";

/**
 * The f32 embedding lookup and its transpose on the `wasm` device (one WebAssembly SIMD
 * module), the references of src/kernels/embedding.ts; ids are checked on the host first
 * (embeddingOnHost), so the kernels never see an id outside [0, V):
 * - gather(table, ids, out, N, D, tid, threads): out[n, :] = table[ids[n], :], one bulk
 *   memory.copy (a memmove) per row; rows n round-robin between threads. Exact.
 * - scatter_add(grad, ids, out, N, D, cols, tid, threads): out[v, :] += grad[n, :] for n = 0,
 *   1, ..., N - 1 with v = ids[n], into the zero-filled out [V, D], 4 columns per vector and the
 *   tail one at a time. Work units are blocks of `cols` columns, round-robin between threads:
 *   each thread reads every id but writes only its own columns, so no two threads ever write one
 *   element (a block is a multiple of 16 floats, 64 bytes, so they share no cache line either),
 *   and every element is summed in the same order, n ascending, on any thread count.
 *
 * Precision of scatter_add: each out[v, d] is the f32 sum, in id order, of the k_v gradient
 * values whose id is v, added to 0. The reference sums in doubles and rounds once (error
 * <= u |s|, u = 2^-24). Recursive f32 summation of k terms errs by at most
 * gamma_(k-1) sum |g| with gamma_m = m u / (1 - m u) (Higham, "Accuracy and Stability of
 * Numerical Algorithms", 2nd ed., section 4.2): exact for a token seen once (k = 1: the value
 * itself), and for the conformance suite's 1e-6 (1 + |ref|) (test/ops_devices.test.ts, ids
 * repeated at most twice, values ~1) at most u sum |g| ~ 1e-7. A float64 accumulator would
 * cost V x D doubles (1.1 GB at Qwen2-0.5B's 151,936 x 896) for an error that matters only where a
 * token repeats thousands of times in one batch; f32 accumulation is also what PyTorch's
 * embedding backward does for an f32 table (index_add_ in the gradient's dtype).
 */

const c = i32.const;

function gatherKernel(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("gather", new Array(7).fill(T.i32));
  const [table, ids, out, N, D, tid, threads] = fn.params as Local[] as Local[] & { length: 7 };
  const [n, rowBytes] = [fn.local(T.i32), fn.local(T.i32)];
  const body = seq(
    set(rowBytes, i32.shl(get(D!), c(2))),
    forEachUnit(
      n,
      get(N!),
      tid!,
      threads!,
      memoryCopy(
        i32.add(get(out!), i32.mul(get(n), get(rowBytes))),
        i32.add(get(table!), i32.mul(i32.load(i32.add(get(ids!), i32.shl(get(n), c(2)))), get(rowBytes))),
        get(rowBytes),
      ),
    ),
  );
  return { fn, body };
}

function scatterAddKernel(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("scatter_add", new Array(8).fill(T.i32));
  const [grad, ids, out, N, D, cols, tid, threads] = fn.params as Local[] as Local[] & { length: 8 };
  const [u, c0, c1, n, po, pg, e] = Array.from({ length: 7 }, () => fn.local(T.i32));
  /** out[ids[n], e..] += grad[n, e..], `lanes` columns (4: a vector; 1: lane 0's scalar). */
  const step = (vector: boolean) =>
    seq(
      vector ? v128.store(get(po), f32x4.add(v128.load(get(po)), v128.load(get(pg)))) : f32.store(get(po), f32.add(f32.load(get(po)), f32.load(get(pg)))),
      inc(po, c(vector ? 16 : 4)),
      inc(pg, c(vector ? 16 : 4)),
      inc(e, c(vector ? 4 : 1)),
    );
  const body = forEachUnit(
    u,
    i32.div_s(i32.add(get(D!), i32.sub(get(cols!), c(1))), get(cols!)),
    tid!,
    threads!,
    seq(
      set(c0, i32.mul(get(u), get(cols!))),
      set(c1, i32.add(get(c0), get(cols!))),
      ifElse(i32.gt_s(get(c1), get(D!)), set(c1, get(D!))),
      forRange(
        n,
        c(0),
        get(N!),
        c(1),
        seq(
          set(pg, i32.add(get(grad!), i32.shl(i32.add(i32.mul(get(n), get(D!)), get(c0)), c(2)))),
          set(po, i32.add(get(out!), i32.shl(i32.add(i32.mul(i32.load(i32.add(get(ids!), i32.shl(get(n), c(2)))), get(D!)), get(c0)), c(2)))),
          set(e, get(c0)),
          whileLoop(i32.le_s(i32.add(get(e), c(4)), get(c1)), step(true)),
          whileLoop(i32.lt_s(get(e), get(c1)), step(false)),
        ),
      ),
    ),
  );
  return { fn, body };
}

/** The module: gather, scatter_add. */
export function embeddingModule(shared: boolean): Uint8Array {
  return buildModule(shared, [gatherKernel(), scatterAddKernel()]);
}

/** Export names of the module's kernels. */
export const EMBEDDING_KERNELS = ["gather", "scatter_add"] as const;

/** gatherRef on the device for f32 arrays in its memory (else the reference), after gatherOnHost's checks. */
function gatherKernelOnDevice(wasm: WasmBackend, table: HostArray, ids: Int32Array, out: HostArray, g: EmbeddingGeometry): void {
  if (!wasm.ownF32([table, out]) || !wasm.owns(ids)) return gatherRef(table, ids, out, g);
  if (ids.length * g.D === 0) return;
  wasm.call("gather", [table.byteOffset, ids.byteOffset, out.byteOffset, ids.length, g.D], wasm.rowThreads(ids.length, g.D));
}

/**
 * scatterAddRef on the device for f32 arrays in its memory (else the reference), after
 * scatterAddOnHost's checks (out is zero-filled). On several threads each gets a block of
 * ceil(D / threads) columns rounded up to 16.
 */
function scatterAddKernelOnDevice(wasm: WasmBackend, grad: HostArray, ids: Int32Array, out: HostArray, g: EmbeddingGeometry): void {
  if (!wasm.ownF32([grad, out]) || !wasm.owns(ids)) return scatterAddRef(grad, ids, out, g);
  if (ids.length * g.D === 0) return;
  const threads = wasm.rowThreads(ids.length, g.D);
  const cols = threads === 1 ? g.D : 16 * Math.ceil(g.D / threads / 16);
  wasm.call("scatter_add", [grad.byteOffset, ids.byteOffset, out.byteOffset, ids.length, g.D, cols], threads);
}

registerKernel(gatherOp, "wasm", gatherOnHost(gatherKernelOnDevice));
registerKernel(scatterAddOp, "wasm", scatterAddOnHost(scatterAddKernelOnDevice));
