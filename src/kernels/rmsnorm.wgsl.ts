import type { RmsNormGeometry } from "../tensor/ops/rmsnorm.ts";
import { rmsNormOp } from "../tensor/ops/rmsnorm.ts";
import { registerKernel } from "./registry.ts";
import { checkRmsNorm } from "./rmsnorm.ts";
import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { kernel, single } from "./webgpu/program.ts";
import { ROW_MAIN_ARGS, dispatchRows, rowPrologue, rowWorkgroupSize, workgroupReduce } from "./reduce.wgsl.ts";

/**
 * WGSL RMSNorm, specified by rmsNormRef in src/kernels/rmsnorm.ts:
 * y[r, d] = x[r, d] * rsqrt(mean_d x[r, d]^2 + eps) * weight[d].
 *
 * Technique: the row kernels' layout (reduce.wgsl.ts: a workgroup per row on a GPU, an
 * invocation per row on a CPU emulation); the sum of squares by the shared reduction, then one
 * strided pass scales the row.
 */

const rmsNormKernel = (lanes: number) =>
  kernel(`rmsNorm.lanes${lanes}`, () => ({
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
    body: () => `${workgroupReduce("f32", lanes)}
@compute @workgroup_size(${rowWorkgroupSize(lanes)})
fn main(${ROW_MAIN_ARGS}) {
  ${rowPrologue(lanes)}
  let base = row * P.D;
  var ss = 0.0;
  for (var d = lane; d < P.D; d += ${lanes}u) { let v = x[base + d]; ss += v * v; }
  let inv = inverseSqrt(wg_sum(ss, lane) / f32(P.D) + P.eps);
  for (var d = lane; d < P.D; d += ${lanes}u) { y[base + d] = x[base + d] * inv * w[d]; }
}`,
  }));

/**
 * @param x f32 contiguous [rows, D], one chunk
 * @param weight f32 [D]
 * @param out f32 [rows, D]
 */
function encodeRmsNorm(host: KernelHost, x: GpuData, weight: GpuData, out: GpuData, g: RmsNormGeometry): void {
  dispatchRows(host, rmsNormKernel(host.rowWorkgroup), { rows: g.rows, D: g.D, eps: g.eps }, [single(x), single(weight), single(out)], g.rows);
}

// The webgpu kernel: x and weight f32 in one chunk each.
registerKernel(rmsNormOp, "webgpu", (gpu, x, weight, g) => {
  const xs = gpu.space.wholeFloat("rmsNorm", "x", x);
  const ws = gpu.space.wholeFloat("rmsNorm", "weight", weight);
  const out = gpu.space.output("rmsNorm", "f32", checkRmsNorm(xs, ws, g));
  encodeRmsNorm(gpu, xs, ws, out, g);
  return out;
});
