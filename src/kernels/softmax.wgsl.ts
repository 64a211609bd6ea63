import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { kernel, single } from "./webgpu/program.ts";
import { NEG_BIG, ROW_MAIN_ARGS, workgroupReduce } from "./reduce.wgsl.ts";

/**
 * WGSL row softmax and log-softmax, specified by softmaxRef in src/kernels/softmax.ts:
 * out = exp(x - lse) or x - lse, with lse = m + log sum exp(x - m) and m the row maximum (so no
 * exp overflows).
 *
 * Technique: one workgroup per row (see reduce.wgsl.ts): a strided pass and a tree for the max,
 * a second pass and tree for the sum of exp, a third pass writes. The row is read three times
 * but never stored in between.
 */

/**
 * WGSL `row_lse(base, cols, lid)`: the log-sum-exp of x[base .. base + cols), returned to every
 * invocation of the row's workgroup of `wg` invocations. Includes `workgroupReduce` and needs a
 * buffer named `x`; call it in uniform control flow. Shared with cross_entropy.wgsl.ts.
 */
export const rowLse = (wg: number): string => `${workgroupReduce("f32", wg)}
fn row_lse(base: u32, cols: u32, lid: u32) -> f32 {
  var m = ${NEG_BIG};
  for (var c = lid; c < cols; c += ${wg}u) { m = max(m, x[base + c]); }
  m = wg_max(m, lid);
  var s = 0.0;
  for (var c = lid; c < cols; c += ${wg}u) { s += exp(x[base + c] - m); }
  return m + log(wg_sum(s, lid));
}`;

const softmaxKernel = (wg: number) =>
  kernel(`softmax.wg${wg}`, () => ({
    params: [
      { name: "rows", type: "u32" },
      { name: "cols", type: "u32" },
      { name: "log", type: "u32" },
    ],
    buffers: [
      { name: "x", type: "f32", access: "read" },
      { name: "y", type: "f32", access: "read_write" },
    ],
    body: () => `${rowLse(wg)}
@compute @workgroup_size(${wg})
fn main(${ROW_MAIN_ARGS}) {
  let row = wg_linear(wid, nwg);
  if (row >= P.rows) { return; }
  let base = row * P.cols;
  let lse = row_lse(base, P.cols, lid);
  for (var c = lid; c < P.cols; c += ${wg}u) {
    let logp = x[base + c] - lse;
    y[base + c] = select(exp(logp), logp, P.log == 1u);
  }
}`,
  }));

/**
 * out = softmax or log-softmax of each row.
 * @param x f32 contiguous [rows, cols], one chunk
 * @param out f32 [rows, cols]
 */
export function encodeSoftmax(host: KernelHost, x: GpuData, out: GpuData, rows: number, cols: number, log: boolean): void {
  host.dispatch(softmaxKernel(host.rowWorkgroup), { rows, cols, log: log ? 1 : 0 }, [single(x), single(out)], rows);
}
