import type { RmsNormGeometry } from "../tensor/backend.ts";
import type { HostArray } from "../tensor/dtype.ts";

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
