import type { RopeGeometry } from "../tensor/ops/rope.ts";
import { ropeOp } from "../tensor/ops/rope.ts";
import { registerKernel } from "./registry.ts";
import { checkRope } from "./rope.ts";
import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { groups, kernel, single } from "./webgpu/program.ts";

/**
 * WGSL rotary position embedding in the Hugging Face rotate_half layout, specified by ropeRef in
 * src/kernels/rope.ts: the pair (d, d + Dh/2) of each head row is rotated by its position's angle,
 *   out[d] = x[d] cos - x[d + Dh/2] sin,   out[d + Dh/2] = x[d + Dh/2] cos + x[d] sin,
 * or by minus the angle when `inverse` (the backward pass: a rotation's transpose is its inverse).
 *
 * Technique: one invocation per pair, so each reads its two inputs and its cos/sin once.
 */

const WG = 256;

const ropeKernel = () =>
  kernel("rope", () => ({
    params: [
      { name: "pairs", type: "u32" },
      { name: "HT", type: "u32" },
      { name: "T", type: "u32" },
      { name: "half", type: "u32" },
      { name: "perBatch", type: "u32" },
      { name: "sign", type: "f32" },
    ],
    buffers: [
      { name: "x", type: "f32", access: "read" },
      { name: "cosT", type: "f32", access: "read" },
      { name: "sinT", type: "f32", access: "read" },
      { name: "y", type: "f32", access: "read_write" },
    ],
    body: () => `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let p = wg_linear(wid, nwg) * ${WG}u + lid;
  if (p >= P.pairs) { return; }
  let d = p % P.half;
  let row = p / P.half;            // (b * H + h) * T + t
  let t = row % P.T;
  let b = select(0u, row / P.HT, P.perBatch == 1u);
  let tab = (b * P.T + t) * P.half + d;
  let c = cosT[tab];
  let s = P.sign * sinT[tab];
  let lo = row * 2u * P.half + d;
  let hi = lo + P.half;
  let xl = x[lo];
  let xh = x[hi];
  y[lo] = xl * c - xh * s;
  y[hi] = xh * c + xl * s;
}`,
  }));

/**
 * @param x f32 contiguous [B, H, T, Dh], one chunk (Dh even; the caller checks)
 * @param cos, sin f32 [Bc, T, Dh/2] with Bc = 1 or B
 * @param out f32 [B, H, T, Dh]
 */
function encodeRope(
  host: KernelHost,
  x: GpuData,
  cos: GpuData,
  sin: GpuData,
  out: GpuData,
  g: RopeGeometry,
): void {
  const { B, H, T, Dh, Bc, inverse } = g;
  const pairs = (B * H * T * Dh) / 2;
  const params = { pairs, HT: H * T, T, half: Dh / 2, perBatch: Bc === 1 ? 0 : 1, sign: inverse ? -1 : 1 };
  host.dispatch(ropeKernel(), params, [single(x), single(cos), single(sin), single(out)], groups(pairs, WG));
}

// The webgpu kernel: x, cos and sin f32 in one chunk each.
registerKernel(ropeOp, "webgpu", (gpu, x, cos, sin, g) => {
  const [xs, cs, ss] = gpu.floats("rope", { x, cos, sin });
  const out = gpu.space.output("rope", "f32", checkRope(xs!, cs!, ss!, g));
  encodeRope(gpu, xs!, cs!, ss!, out, g);
  return out;
});
