import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { kernel, single } from "./webgpu/program.ts";
import { ROW_MAIN_ARGS, workgroupReduce } from "./reduce.wgsl.ts";

/**
 * WGSL RMSNorm, specified by rmsNormRef in src/kernels/rmsnorm.ts:
 * y[r, d] = x[r, d] * rsqrt(mean_d x[r, d]^2 + eps) * weight[d].
 *
 * Technique: one workgroup per row; the sum of squares by the shared workgroup reduction
 * (reduce.wgsl.ts), then one strided pass scales the row.
 */

const rmsNormKernel = (wg: number) =>
  kernel(`rmsNorm.wg${wg}`, () => ({
    params: [
      { name: "rows", type: "u32" },
      { name: "D", type: "u32" },
      { name: "eps", type: "f32" },
    ],
    buffers: [
      { name: "x", type: "f32", access: "read" },
      { name: "w", type: "f32", access: "read" },
      { name: "y", type: "f32", access: "read_write" },
    ],
    body: () => `${workgroupReduce("f32", wg)}
@compute @workgroup_size(${wg})
fn main(${ROW_MAIN_ARGS}) {
  let row = wg_linear(wid, nwg);
  if (row >= P.rows) { return; }
  let base = row * P.D;
  var ss = 0.0;
  for (var d = lid; d < P.D; d += ${wg}u) { let v = x[base + d]; ss += v * v; }
  let inv = inverseSqrt(wg_sum(ss, lid) / f32(P.D) + P.eps);
  for (var d = lid; d < P.D; d += ${wg}u) { y[base + d] = x[base + d] * inv * w[d]; }
}`,
  }));

/**
 * @param x f32 contiguous [rows, D], one chunk
 * @param weight f32 [D]
 * @param out f32 [rows, D]
 */
export function encodeRmsNorm(host: KernelHost, x: GpuData, weight: GpuData, out: GpuData, rows: number, D: number, eps: number): void {
  host.dispatch(rmsNormKernel(host.rowWorkgroup), { rows, D, eps }, [single(x), single(weight), single(out)], rows);
}
