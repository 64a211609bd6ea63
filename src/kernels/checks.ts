import type { AttentionGeometry, View } from "../tensor/backend.ts";
import { ShapeError, fmt } from "../tensor/errors.ts";
import { numel } from "../tensor/shape.ts";

/**
 * Argument checks that every backend makes the same way, so the cpu reference and the webgpu
 * device reject the same calls with the same messages.
 */

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

/**
 * Elements each attention operand must hold: q and out [B, H, Tq, Dh], k and v [B, Hkv, Tk, Dh],
 * lse [B, H, Tq], keyMask [B, Tk].
 * @throws ShapeError when H is not a multiple of Hkv (grouped-query attention shares each kv
 *   head among H / Hkv query heads)
 */
export function attentionSizes(op: string, g: AttentionGeometry): { q: number; kv: number; lse: number; keyMask: number } {
  if (g.Hkv <= 0 || g.H % g.Hkv !== 0) throw new ShapeError(op, `query heads H = ${g.H} are not a multiple of kv heads Hkv = ${g.Hkv}`);
  return { q: g.B * g.H * g.Tq * g.Dh, kv: g.B * g.Hkv * g.Tk * g.Dh, lse: g.B * g.H * g.Tq, keyMask: g.B * g.Tk };
}
