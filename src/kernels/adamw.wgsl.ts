import type { AdamWStep } from "../tensor/optim.ts";
import { adamwOp } from "../tensor/optim.ts";
import { checkAdamW } from "./adamw.ts";
import { registerKernel } from "./registry.ts";
import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { groups, kernel, single } from "./webgpu/program.ts";

/**
 * WGSL AdamW step, in place, specified by adamwRef in src/kernels/adamw.ts:
 *   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
 *   p = p - lr (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd p).
 * Technique: one invocation per element. 1 - b and the bias corrections 1 - b^t are computed on
 * the host in double precision and passed as uniforms: 1 - f32(0.999) in f32 would be off by
 * 1.3e-5 relative, which the second moment would inherit.
 */

const WG = 256;

const adamwKernel = () =>
  kernel("adamw", () => ({
    params: [
      { name: "n", type: "u32" as const },
      ...["lr", "beta1", "beta2", "omb1", "omb2", "eps", "wd", "bc1", "bc2"].map((name) => ({ name, type: "f32" as const })),
    ],
    buffers: [
      { name: "p", type: "f32", access: "read_write" },
      { name: "g", type: "f32", access: "read" },
      { name: "m", type: "f32", access: "read_write" },
      { name: "v", type: "f32", access: "read_write" },
    ],
    body: () => `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = wg_linear(wid, nwg) * ${WG}u + lid;
  if (i >= P.n) { return; }
  let gi = g[i];
  let mi = P.beta1 * m[i] + P.omb1 * gi;
  let vi = P.beta2 * v[i] + P.omb2 * gi * gi;
  let update = mi / P.bc1 / (sqrt(vi / P.bc2) + P.eps);
  p[i] = p[i] - P.lr * (update + P.wd * p[i]);
  m[i] = mi;
  v[i] = vi;
}`,
  }));

/**
 * One step on `n` elements.
 * @param param, m, v f32 [n], updated in place, one chunk each
 * @param grad f32 [n]
 */
function encodeAdamW(host: KernelHost, param: GpuData, grad: GpuData, m: GpuData, v: GpuData, h: AdamWStep): void {
  const n = param.numel;
  const params = {
    n,
    lr: h.lr,
    beta1: h.beta1,
    beta2: h.beta2,
    omb1: 1 - h.beta1,
    omb2: 1 - h.beta2,
    eps: h.eps,
    wd: h.weightDecay,
    bc1: 1 - Math.pow(h.beta1, h.step),
    bc2: 1 - Math.pow(h.beta2, h.step),
  };
  host.dispatch(adamwKernel(), params, [single(param), single(grad), single(m), single(v)], groups(n, WG));
}

// The webgpu kernel: param, grad, m and v f32 in one chunk each.
registerKernel(adamwOp, "webgpu", (gpu, param, grad, m, v, h) => {
  const [ps, gs, ms, vs] = gpu.floats("adamw", { param, grad, m, v });
  checkAdamW(ps!, { grad: gs!, m: ms!, v: vs! });
  encodeAdamW(gpu, ps!, gs!, ms!, vs!, h);
});
