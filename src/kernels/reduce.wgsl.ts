import type { ReduceOp } from "../tensor/ops/reduce.ts";
import { reduceRowsOp } from "../tensor/ops/reduce.ts";
import { checkReduceRows } from "./reduce.ts";
import { registerKernel } from "./registry.ts";
import type { PooledBuffer } from "./webgpu/pool.ts";
import type { GpuData, Kernel, KernelHost, ParamValues } from "./webgpu/program.ts";
import { kernel, single } from "./webgpu/program.ts";
import { MAX_NAN_FN } from "./nan.wgsl.ts";

/**
 * WGSL row reductions: reduceRows (sum / max), specified by reduceRowsRef in
 * src/kernels/reduce.ts, plus the workgroup reduction that the other row kernels (softmax,
 * cross-entropy, rmsnorm) share.
 *
 * Technique, for `lanes` invocations per row (KernelHost.rowWorkgroup: 256 on a GPU, 1 on a
 * CPU emulation such as SwiftShader):
 * - lanes > 1: one workgroup per row. Each lane folds a strided slice of the row (columns lane,
 *   lane + lanes, ...), so reads are coalesced across the workgroup; the partials are then
 *   combined by a tree in workgroup memory (log2(lanes) halving steps, a barrier between steps).
 * - lanes = 1: one invocation per row, ROWS_PER_SOLO_WORKGROUP rows per workgroup, no reduction
 *   and no barrier. A CPU emulation runs a workgroup's invocations 4 at a time in SIMD lanes and
 *   pays a thread switch per barrier, so there a row per invocation is the fast form (measured on
 *   SwiftShader: RMSNorm of 128 x 64 rows 0.40 ms with 4 lanes and barriers, 0.18 ms with one).
 * Rows map to workgroups of a 2-D grid, so more than 65535 rows work. Every row kernel's key
 * names its lanes.
 */

/** Rows per workgroup when each row has one invocation. */
const ROWS_PER_SOLO_WORKGROUP = 64;

/** Rows per workgroup of a row kernel with `lanes` invocations per row. */
const rowsPerWorkgroup = (lanes: number) => (lanes === 1 ? ROWS_PER_SOLO_WORKGROUP : 1);

/** Invocations per workgroup of a row kernel with `lanes` invocations per row. */
export const rowWorkgroupSize = (lanes: number) => lanes * rowsPerWorkgroup(lanes);

/** Smallest finite f32: the identity of max (WGSL may assume no infinities exist). */
export const NEG_BIG = "-3.4028234e38";

/** The identity of max for each element type. */
const LOWEST = { f32: NEG_BIG, i32: "i32(-2147483648)" } as const;

/**
 * WGSL functions `wg_sum(v, lane)` and `wg_max(v, lane)` over element type `t`: the sum / max of
 * `v` over the `lanes` invocations of a row (a power of two), returned to all of them; an f32
 * max is NaN when any lane's value is (nan.wgsl.ts), and `max_nan` is defined for the kernel. With
 * lanes > 1 call them in uniform control flow (they contain barriers); they share one scratch
 * array and end with a barrier, so calls can follow each other directly. With one lane they
 * return `v`.
 */
export function workgroupReduce(t: "f32" | "i32", lanes: number): string {
  const maxOf = (a: string, b: string) => (t === "f32" ? `max_nan(${a}, ${b})` : `max(${a}, ${b})`);
  const prelude = `${MAX_NAN_FN}\n`;
  if (lanes === 1) return `${prelude}fn wg_sum(v: ${t}, lane: u32) -> ${t} { return v; }\nfn wg_max(v: ${t}, lane: u32) -> ${t} { return v; }`;
  const tree = (name: string, combine: (a: string, b: string) => string) => `
fn ${name}(v: ${t}, lane: u32) -> ${t} {
  red[lane] = v;
  workgroupBarrier();
  for (var s = ${lanes / 2}u; s > 0u; s = s >> 1u) {
    if (lane < s) { red[lane] = ${combine("red[lane]", "red[lane + s]")}; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;
  return `${prelude}var<workgroup> red: array<${t}, ${lanes}>;${tree("wg_sum", (a, b) => `${a} + ${b}`)}${tree("wg_max", maxOf)}`;
}

/** The WGSL signature shared by row kernels: workgroup id, grid size and invocation index. */
export const ROW_MAIN_ARGS =
  "@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32";

/**
 * WGSL that starts a row kernel's `main` (with ROW_MAIN_ARGS): `row`, this invocation's row, and
 * `lane`, its index among the row's `lanes` invocations; invocations past the last row return
 * (with lanes > 1 a whole workgroup does, so barriers stay uniform).
 */
export function rowPrologue(lanes: number): string {
  return lanes === 1
    ? `let row = wg_linear(wid, nwg) * ${ROWS_PER_SOLO_WORKGROUP}u + lid;\n  let lane = 0u;\n  if (row >= P.rows) { return; }`
    : `let row = wg_linear(wid, nwg);\n  let lane = lid;\n  if (row >= P.rows) { return; }`;
}

/** Records a row kernel over `rows` rows with the host's lanes per row. */
export function dispatchRows(host: KernelHost, k: Kernel, params: ParamValues, buffers: readonly PooledBuffer[], rows: number): void {
  host.dispatch(k, params, buffers, Math.ceil(rows / rowsPerWorkgroup(host.rowWorkgroup)));
}

function reduceKernel(op: ReduceOp, t: "f32" | "i32", lanes: number) {
  return kernel(`reduceRows.${op}.${t}.lanes${lanes}`, () => ({
    params: [
      { name: "rows", type: "u32" },
      { name: "cols", type: "u32" },
    ],
    buffers: [
      { name: "x", type: t, access: "read" },
      { name: "y", type: t, access: "read_write" },
    ],
    body: () => `${workgroupReduce(t, lanes)}
@compute @workgroup_size(${rowWorkgroupSize(lanes)})
fn main(${ROW_MAIN_ARGS}) {
  ${rowPrologue(lanes)}
  let base = row * P.cols;
  var acc = ${op === "sum" ? `${t}(0)` : LOWEST[t]};
  for (var c = lane; c < P.cols; c += ${lanes}u) { acc = ${op === "sum" ? "acc + x[base + c]" : `${t === "f32" ? "max_nan" : "max"}(acc, x[base + c])`}; }
  let r = ${op === "sum" ? "wg_sum" : "wg_max"}(acc, lane);
  if (lane == 0u) { y[row] = r; }
}`,
  }));
}

/**
 * out[r] = sum_c x[r, c] or max_c x[r, c]; i32 sums wrap modulo 2^32 like the reference's store.
 * @param x f32 or i32 contiguous [rows, cols], one chunk
 * @param out [rows], dtype of x
 */
function encodeReduceRows(host: KernelHost, op: ReduceOp, x: GpuData, out: GpuData, rows: number, cols: number): void {
  dispatchRows(host, reduceKernel(op, x.dtype, host.rowWorkgroup), { rows, cols }, [single(x), single(out)], rows);
}

// The webgpu kernel: x f32 or i32 in one chunk. Max over empty rows is a ShapeError (checkReduceRows).
registerKernel(reduceRowsOp, "webgpu", (gpu, op, x, rows, cols) => {
  const name = `reduce ${op}`;
  const xs = gpu.space.whole(name, "x", x);
  checkReduceRows(op, xs, rows, cols);
  const out = gpu.space.output(name, xs.dtype, rows);
  encodeReduceRows(gpu, op, xs, out, rows, cols);
  return out;
});
