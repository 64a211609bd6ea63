import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { ShapeError, fmt } from "../errors.ts";
import { Tensor } from "../tensor.ts";
import { assertFloat, release, rowsOf } from "./operands.ts";

/**
 * RMSNorm over the last axis, fused forward. The device op (`rmsNormOp`) and its geometry are
 * declared here; its kernels are in src/kernels (rmsnorm.ts, rmsnorm.wgsl.ts, wasm/rows.wasm.ts).
 */

/** Geometry of RMSNorm over contiguous x [rows, D] with weight [D]. */
export interface RmsNormGeometry {
  rows: number;
  D: number;
  /** Added to mean(x^2) under the square root (config `rms_norm_eps`). */
  eps: number;
}

/**
 * RMSNorm over rows: out = x / sqrt(mean(x^2) + eps) * weight; x [rows, D], weight [D].
 * Kernels: src/kernels/rmsnorm.ts, rmsnorm.wgsl.ts, wasm/rows.wasm.ts.
 */
export const rmsNormOp = deviceOp<[x: Storage, weight: Storage, g: RmsNormGeometry], Storage>("rmsNorm");

/**
 * RMSNorm (Zhang & Sennrich 2019; HF LlamaRMSNorm): y = x / sqrt(mean(x^2) + eps) * weight,
 * over the last axis of x [..., D], weight [D]; fused kernel forward.
 * Gradient, with r = (mean(x^2) + eps)^(-1/2) and u = g * weight:
 *   dx = r u - x r^3 mean(u x),  dweight = sum over rows of g x r.
 * @throws ShapeError when weight is not [D]; DeviceError when x and weight are on different devices.
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  assertFloat("rmsNorm", x, weight);
  assertSameDevice("rmsNorm", x, weight);
  const D = x.shape[x.rank - 1]!;
  if (weight.rank !== 1 || weight.shape[0] !== D) {
    throw new ShapeError("rmsNorm", `weight ${fmt(weight.shape)} does not match x ${fmt(x.shape)} (last axis ${D})`);
  }
  const { dense, rows } = rowsOf(x);
  const wd = weight.isDense() ? weight : weight.contiguous(true);
  const y = Tensor.fromStorage(x.backend, x.backend.run(rmsNormOp, dense.storage, wd.storage, { rows, D, eps }), x.shape);
  release(dense, x);
  release(wd, weight);
  return record(y, "rmsNorm", [x, weight], (g) => {
    const r = x.square().mean(-1, true).add(eps).rsqrt();
    const u = g.mul(weight);
    const dx = u.mul(r).sub(x.mul(r.pow(3)).mul(u.mul(x).mean(-1, true)));
    const dw = g.mul(x).mul(r).reshape([-1, D]).sum(0);
    return [dx, dw];
  });
}
