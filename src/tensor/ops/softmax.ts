import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { Tensor } from "../tensor.ts";
import { assertFloat, release, rowsOf } from "./operands.ts";

/**
 * Softmax and log-softmax over the last axis as one fused kernel per row. The device op
 * (`softmaxOp`) is declared here; its kernels are in src/kernels (softmax.ts, softmax.wgsl.ts,
 * wasm/rows.wasm.ts).
 */

/**
 * Row softmax (log: log-softmax) of contiguous x [rows, cols], max-subtracted: out [rows, cols].
 * Kernels: src/kernels/softmax.ts (cpu), softmax.wgsl.ts (webgpu), wasm/rows.wasm.ts (wasm).
 */
export const softmaxOp = deviceOp<[x: Storage, rows: number, cols: number, log: boolean], Storage>("softmax");

/**
 * Softmax over the last axis, max-subtracted for stability. x [..., C] -> [..., C].
 * Gradient: dx = y (g - sum(g y)) along the last axis.
 */
export function softmax(x: Tensor): Tensor {
  assertFloat("softmax", x);
  const { dense, rows, cols } = rowsOf(x);
  const y = Tensor.fromStorage(x.backend, x.backend.run(softmaxOp, dense.storage, rows, cols, false), x.shape);
  release(dense, x);
  return record(y, "softmax", [x], (g) => [y.mul(g.sub(g.mul(y).sum(-1, true)))]);
}

/**
 * log(softmax(x)) over the last axis, computed as x - max - log(sum(exp(x - max))).
 * Gradient: dx = g - softmax(x) sum(g) along the last axis.
 */
export function logSoftmax(x: Tensor): Tensor {
  assertFloat("logSoftmax", x);
  const { dense, rows, cols } = rowsOf(x);
  const y = Tensor.fromStorage(x.backend, x.backend.run(softmaxOp, dense.storage, rows, cols, true), x.shape);
  release(dense, x);
  return record(y, "logSoftmax", [x], (g) => [g.sub(y.exp().mul(g.sum(-1, true)))]);
}
