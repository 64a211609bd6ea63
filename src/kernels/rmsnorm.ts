import type { HostArray } from "../tensor/dtype.ts";
import type { RmsNormGeometry } from "../tensor/ops/rmsnorm.ts";
import { rmsNormOp } from "../tensor/ops/rmsnorm.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import type { CpuBackend } from "./cpu.ts";
import { floatArgs } from "./host.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * RMSNorm (Zhang & Sennrich 2019), as Hugging Face `LlamaRMSNorm` computes it:
 * y = x * rsqrt(mean(x^2) + eps) * weight, per row, with no mean subtraction and no bias.
 * The backward pass is written with tensor ops in the tensor layer.
 */

/**
 * out[r, d] = x[r, d] / sqrt(mean_d'(x[r, d']^2) + eps) * weight[d], in doubles.
 * @param x contiguous float [rows, D]
 * @param weight [D], dtype of x
 * @param out [rows, D], dtype of x
 */
export function rmsNormRef(x: HostArray, weight: HostArray, out: HostArray, g: RmsNormGeometry): void {
  const { rows, D, eps } = g;
  for (let r = 0; r < rows; r++) {
    const start = r * D;
    let sumSq = 0;
    for (let d = 0; d < D; d++) sumSq += x[start + d]! * x[start + d]!;
    const inv = 1 / Math.sqrt(sumSq / D + eps);
    for (let d = 0; d < D; d++) out[start + d] = x[start + d]! * inv * weight[d]!;
  }
}

/**
 * The size check of RMSNorm: x [rows, D], weight [D].
 * @returns the element count of out [rows, D]
 */
export function checkRmsNorm(x: Sized, weight: Sized, g: RmsNormGeometry): number {
  need("rmsNorm", "x", x, g.rows * g.D);
  need("rmsNorm", "weight", weight, g.D);
  return g.rows * g.D;
}

/**
 * rmsNorm on a host-memory device: one float dtype, the size check, the output, then `compute`
 * on the host arrays (the reference on cpu; the wasm device's row kernel, wasm/rows.wasm.ts).
 */
export function rmsNormOnHost<D extends CpuBackend>(
  compute: (device: D, x: HostArray, weight: HostArray, out: HostArray, g: RmsNormGeometry) => void,
): KernelOf<typeof rmsNormOp, D> {
  return (device, x, weight, g) => {
    const [hx, hw] = floatArgs("rmsNorm", [x, weight]);
    const out = device.allocate(x.dtype, checkRmsNorm(x, weight, g));
    compute(device, hx!, hw!, out, g);
    return device.wrap(out);
  };
}

registerKernel(rmsNormOp, "cpu", rmsNormOnHost((_cpu, ...args) => rmsNormRef(...args)));
