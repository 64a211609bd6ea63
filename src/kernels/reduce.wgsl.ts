import type { ReduceOp } from "../tensor/backend.ts";
import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { kernel, single } from "./webgpu/program.ts";

/**
 * WGSL row reductions: reduceRows (sum / max), specified by reduceRowsRef in
 * src/kernels/reduce.ts, plus the workgroup reduction that the other row kernels (softmax,
 * cross-entropy, rmsnorm) share.
 *
 * Technique: one workgroup per row. Each of the wg invocations (KernelHost.rowWorkgroup: 256 on
 * a GPU, 4 on SwiftShader) folds a strided slice of the row (columns lid, lid + wg, ...), so
 * reads are coalesced across the workgroup; the wg partials are then combined by a tree in
 * workgroup memory (log2(wg) halving steps, a barrier between steps). Rows map to workgroups of
 * a 2-D grid, so more than 65535 rows work. Every row kernel's key names its wg.
 */

/** Smallest finite f32: the identity of max (WGSL may assume no infinities exist). */
export const NEG_BIG = "-3.4028234e38";

/** The identity of max for each element type. */
const LOWEST = { f32: NEG_BIG, i32: "i32(-2147483648)" } as const;

/**
 * WGSL functions `wg_sum(v, lid)` and `wg_max(v, lid)` over element type `t`: the sum / max of
 * `v` over the workgroup's `wg` invocations (a power of two), returned to all of them. Call them
 * in uniform control flow (they contain barriers); they share one scratch array and end with a
 * barrier, so calls can follow each other directly.
 */
export function workgroupReduce(t: "f32" | "i32", wg: number): string {
  const tree = (name: string, combine: (a: string, b: string) => string) => `
fn ${name}(v: ${t}, lid: u32) -> ${t} {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = ${combine("red[lid]", "red[lid + s]")}; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;
  return `var<workgroup> red: array<${t}, ${wg}>;${tree("wg_sum", (a, b) => `${a} + ${b}`)}${tree("wg_max", (a, b) => `max(${a}, ${b})`)}`;
}

/** The WGSL signature shared by row kernels: workgroup id, grid size and invocation index. */
export const ROW_MAIN_ARGS =
  "@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32";

function reduceKernel(op: ReduceOp, t: "f32" | "i32", wg: number) {
  return kernel(`reduceRows.${op}.${t}.wg${wg}`, () => ({
    params: [
      { name: "rows", type: "u32" },
      { name: "cols", type: "u32" },
    ],
    buffers: [
      { name: "x", type: t, access: "read" },
      { name: "y", type: t, access: "read_write" },
    ],
    body: () => `${workgroupReduce(t, wg)}
@compute @workgroup_size(${wg})
fn main(${ROW_MAIN_ARGS}) {
  let row = wg_linear(wid, nwg);
  if (row >= P.rows) { return; }
  let base = row * P.cols;
  var acc = ${op === "sum" ? `${t}(0)` : LOWEST[t]};
  for (var c = lid; c < P.cols; c += ${wg}u) { acc = ${op === "sum" ? "acc + x[base + c]" : "max(acc, x[base + c])"}; }
  let r = ${op === "sum" ? "wg_sum" : "wg_max"}(acc, lid);
  if (lid == 0u) { y[row] = r; }
}`,
  }));
}

/**
 * out[r] = sum_c x[r, c] or max_c x[r, c]; i32 sums wrap modulo 2^32 like the reference's store.
 * @param x f32 or i32 contiguous [rows, cols], one chunk
 * @param out [rows], dtype of x
 */
export function encodeReduceRows(host: KernelHost, op: ReduceOp, x: GpuData, out: GpuData, rows: number, cols: number): void {
  host.dispatch(reduceKernel(op, x.dtype, host.rowWorkgroup), { rows, cols }, [single(x), single(out)], rows);
}
