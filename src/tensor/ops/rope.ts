import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { ShapeError, fmt } from "../errors.ts";
import { Tensor } from "../tensor.ts";
import { assertFloat, release } from "./operands.ts";

/**
 * Rotary position embedding of q and k. The device op (`ropeOp`) and its geometry are declared
 * here; its kernels are in src/kernels (rope.ts, rope.wgsl.ts). The angle tables come from
 * src/model/rope.ts.
 */

/**
 * Geometry of a rotary embedding of contiguous x [B, H, T, Dh] with angle tables cos, sin
 * [Bc, T, Dh/2]: Bc = 1 (every batch row shares positions) or B (per-row positions, e.g. left
 * padding). `inverse` rotates by minus the angle (the backward pass).
 */
export interface RopeGeometry {
  B: number;
  H: number;
  T: number;
  Dh: number;
  Bc: number;
  inverse: boolean;
}

/**
 * Rotary embedding, Hugging Face "rotate_half" layout: for d < Dh/2,
 * out[d] = x[d] cos - x[d + Dh/2] sin and out[d + Dh/2] = x[d + Dh/2] cos + x[d] sin,
 * with cos/sin [Bc, T, Dh/2] (Bc = 1 or B) for x [B, H, T, Dh], see RopeGeometry.
 * Kernels: src/kernels/rope.ts, rope.wgsl.ts.
 */
export const ropeOp = deviceOp<[x: Storage, cos: Storage, sin: Storage, g: RopeGeometry], Storage>("rope");

/**
 * Rotary position embedding (Su et al. 2021, "RoFormer"), HF "rotate_half" layout
 * (modeling_llama.py apply_rotary_pos_emb): x [B, H, T, Dh] with cos, sin [Bc, T, Dh/2]
 * (Bc = 1 or B: per-row positions for left-padded batches), the angles of each position and
 * frequency. Gradient: the inverse rotation of g (rotations are orthogonal).
 * @throws ShapeError when the shapes disagree; DeviceError when x, cos and sin are not on one device.
 */
export function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  assertFloat("rope", x, cos, sin);
  assertSameDevice("rope", x, cos, sin);
  if (x.rank !== 4) throw new ShapeError("rope", `x must be [B, H, T, Dh], got ${fmt(x.shape)}`);
  const [B, H, T, Dh] = x.shape as [number, number, number, number];
  const Bc = cos.shape[0]!;
  if (Dh % 2 !== 0 || cos.rank !== 3 || (Bc !== 1 && Bc !== B) || cos.shape[1] !== T || cos.shape[2] !== Dh / 2 || sin.shape.join() !== cos.shape.join()) {
    throw new ShapeError("rope", `x ${fmt(x.shape)} needs cos and sin [1 or ${B}, ${T}, ${Dh / 2}], got ${fmt(cos.shape)} and ${fmt(sin.shape)}`);
  }
  const be = x.backend;
  const c = cos.isDense() ? cos : cos.contiguous(true);
  const s = sin.isDense() ? sin : sin.contiguous(true);
  const apply = (t: Tensor, inverse: boolean): Tensor => {
    const td = t.isDense() ? t : t.contiguous(true);
    const out = Tensor.fromStorage(be, be.run(ropeOp, td.storage, c.storage, s.storage, { B, H, T, Dh, Bc, inverse }), t.shape);
    release(td, t);
    return out;
  };
  const y = apply(x, false);
  record(y, "rope", [x], (g) => [apply(g, true)]);
  const temps = [c, s].filter((t, i) => t !== [cos, sin][i]);
  if (y.node) y.node.owned = temps;
  else for (const t of temps) t.dispose();
  return y;
}
