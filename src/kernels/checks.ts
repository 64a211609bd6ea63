import type { View } from "../tensor/backend.ts";
import { ShapeError, fmt } from "../tensor/errors.ts";
import { numel } from "../tensor/shape.ts";

/**
 * The helpers of the size checks every device makes the same way, so the cpu reference, the
 * webgpu device and any other device reject the same calls with the same messages. Each op's
 * own check sits beside its CPU reference (`checkRope` in src/kernels/rope.ts): it takes the
 * op's storages (anything with a `numel`) and its geometry, throws a ShapeError naming the op,
 * the operand and both sizes when a storage is too small, and returns the element counts of the
 * outputs the geometry implies. Dtype checks stay with each device (which dtypes it holds differs).
 */

/** Anything with an element count: a backend's Storage, a host array's length wrapped, a GPU storage. */
export interface Sized {
  readonly numel: number;
}

/**
 * @throws ShapeError naming `op` and `what` when `s` holds fewer than `n` elements (a storage may
 *   be larger than its use: pooled buffers and views of a bigger tensor).
 */
export function need(op: string, what: string, s: Sized, n: number): void {
  if (s.numel < n) throw new ShapeError(op, `${what} has ${s.numel} elements, needs ${n}`);
}

/**
 * Checks that every element a strided view addresses lies inside its storage: the lowest and
 * highest reachable positions take each axis at 0 or at its end (negative strides allowed).
 * @param storageNumel elements of the view's storage
 * @throws ShapeError naming the op, the view and the storage size
 */
export function assertViewInBounds(op: string, v: View, storageNumel: number): void {
  if (numel(v.shape) === 0) return;
  let lo = v.offset;
  let hi = v.offset;
  v.shape.forEach((size, axis) => {
    const span = (size - 1) * v.strides[axis]!;
    lo += Math.min(0, span);
    hi += Math.max(0, span);
  });
  if (lo < 0 || hi >= storageNumel) {
    throw new ShapeError(op, `view ${fmt(v.shape)} with strides ${fmt(v.strides)} at offset ${v.offset} reaches outside its storage of ${storageNumel} elements`);
  }
}
