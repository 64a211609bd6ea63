import { softmaxOp } from "../tensor/ops/softmax.ts";
import { registerKernel } from "./registry.ts";
import { checkSoftmax } from "./softmax.ts";
import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { kernel, single } from "./webgpu/program.ts";
import { isNanWgsl } from "./nan.wgsl.ts";
import { NEG_BIG, ROW_MAIN_ARGS, dispatchRows, rowPrologue, rowWorkgroupSize, workgroupReduce } from "./reduce.wgsl.ts";

/**
 * WGSL row softmax and log-softmax, specified by softmaxRef in src/kernels/softmax.ts:
 * out = exp(x - lse) or x - lse, with lse = m + log sum exp(x - m) and m the row maximum (so no
 * exp overflows); a NaN anywhere in a row makes m, and so the whole row, NaN, as in PyTorch.
 *
 * Technique: the row kernels' layout (reduce.wgsl.ts: a workgroup per row on a GPU, an
 * invocation per row on a CPU emulation): a strided pass and a reduction for the max, a second
 * pass and reduction for the sum of exp, a third pass writes. The row is read three times but
 * never stored in between.
 */

/**
 * WGSL `row_lse(base, cols, lane)`: the log-sum-exp of x[base .. base + cols), returned to every
 * one of the row's `lanes` invocations. Includes `workgroupReduce` and needs a buffer named `x`;
 * call it in uniform control flow. Shared with cross_entropy.wgsl.ts.
 */
export const rowLse = (lanes: number): string => `${workgroupReduce("f32", lanes)}
fn row_lse(base: u32, cols: u32, lane: u32) -> f32 {
  var m = ${NEG_BIG};
  for (var c = lane; c < cols; c += ${lanes}u) { m = max_nan(m, x[base + c]); }
  m = wg_max(m, lane);
  var s = 0.0;
  for (var c = lane; c < cols; c += ${lanes}u) { s += exp(x[base + c] - m); }
  return m + log(wg_sum(s, lane));
}`;

const softmaxKernel = (lanes: number) =>
  kernel(`softmax.lanes${lanes}`, () => ({
    params: [
      { name: "rows", type: "u32" },
      { name: "cols", type: "u32" },
      { name: "log", type: "u32" },
    ],
    buffers: [
      { name: "x", type: "f32", access: "read" },
      { name: "y", type: "f32", access: "read_write" },
    ],
    body: () => `${rowLse(lanes)}
@compute @workgroup_size(${rowWorkgroupSize(lanes)})
fn main(${ROW_MAIN_ARGS}) {
  ${rowPrologue(lanes)}
  let base = row * P.cols;
  let lse = row_lse(base, P.cols, lane);
  for (var c = lane; c < P.cols; c += ${lanes}u) {
    let logp = x[base + c] - lse;
    // A NaN row stays NaN (exp(NaN) is inf on SwiftShader).
    y[base + c] = select(exp(logp), logp, P.log == 1u || ${isNanWgsl("logp")});
  }
}`,
  }));

/**
 * out = softmax or log-softmax of each row.
 * @param x f32 contiguous [rows, cols], one chunk
 * @param out f32 [rows, cols]
 */
function encodeSoftmax(host: KernelHost, x: GpuData, out: GpuData, rows: number, cols: number, log: boolean): void {
  dispatchRows(host, softmaxKernel(host.rowWorkgroup), { rows, cols, log: log ? 1 : 0 }, [single(x), single(out)], rows);
}

// The webgpu kernel: x f32 in one chunk.
registerKernel(softmaxOp, "webgpu", (gpu, x, rows, cols, log) => {
  const xs = gpu.space.wholeFloat("softmax", "x", x);
  const out = gpu.space.output("softmax", "f32", checkSoftmax(xs, rows, cols));
  encodeSoftmax(gpu, xs, out, rows, cols, log);
  return out;
});
