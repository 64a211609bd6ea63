import { isFloat } from "../dtype.ts";
import { DTypeError, fmt } from "../errors.ts";
import type { Tensor } from "../tensor.ts";

/**
 * How the fused tensor-level ops (softmax.ts, cross_entropy.ts, embedding.ts, weights.ts,
 * rmsnorm.ts, rope.ts, attention.ts) hand their tensors to a kernel: the float check, a
 * tensor as dense rows, and freeing the dense copy made for the kernel.
 */

/** Checks the operands of `op`: DisposedError for a disposed tensor, DTypeError for a non-float one. */
export function assertFloat(op: string, ...xs: Tensor[]): void {
  for (const x of xs) {
    x.assertAlive(op);
    if (!isFloat(x.dtype)) throw new DTypeError(op, `needs a float tensor, got ${x.dtype} ${fmt(x.shape)}`);
  }
}

/** [..., C] -> (dense tensor, rows, C). */
export function rowsOf(x: Tensor): { dense: Tensor; rows: number; cols: number } {
  const cols = x.shape[x.rank - 1] ?? 1;
  return { dense: x.isDense() ? x : x.contiguous(true), rows: x.size / Math.max(cols, 1), cols };
}

/** Frees `dense` when it is a copy made for a kernel. */
export function release(dense: Tensor, original: Tensor): void {
  if (dense !== original) dense.dispose();
}
