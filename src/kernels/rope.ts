import type { HostArray } from "../tensor/dtype.ts";
import { ShapeError } from "../tensor/errors.ts";
import type { RopeGeometry } from "../tensor/ops/rope.ts";
import { ropeOp } from "../tensor/ops/rope.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import { floatArgs } from "./host.ts";
import type { CpuBackend } from "./cpu.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * Rotary position embedding (Su et al. 2021, RoFormer) in the Hugging Face layout:
 * modeling_llama.py `apply_rotary_pos_emb` computes q * cos + rotate_half(q) * sin with
 * rotate_half(x) = cat(-x[Dh/2:], x[:Dh/2]) and cos, sin repeated twice along Dh. So dimension
 * d < Dh/2 is paired with d + Dh/2 (not with d + 1 as in the paper) and the pair is rotated by
 * the angle theta whose cos and sin the tables hold:
 *   out[d]        = x[d] cos - x[d + Dh/2] sin
 *   out[d + Dh/2] = x[d + Dh/2] cos + x[d] sin
 * A rotation is orthogonal, so its transpose, the rotation by -theta (sin -> -sin), is both
 * its inverse and its backward pass.
 */

/**
 * Rotates each (d, d + Dh/2) pair of x by the angle of its position, or by minus it when
 * `g.inverse`.
 * @param x contiguous float [B, H, T, Dh]
 * @param cos, sin [Bc, T, Dh/2] with Bc = 1 (shared by every batch row) or B, dtype of x
 * @param out [B, H, T, Dh], dtype of x
 * @throws ShapeError when Dh is odd or Bc is neither 1 nor B.
 */
export function ropeRef(x: HostArray, cos: HostArray, sin: HostArray, out: HostArray, g: RopeGeometry): void {
  checkRopeGeometry(g);
  const { B, H, T, Dh, Bc, inverse } = g;
  const half = Dh / 2;
  const sign = inverse ? -1 : 1;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < T; t++) {
        const row = ((b * H + h) * T + t) * Dh;
        const table = ((Bc === 1 ? 0 : b) * T + t) * half;
        for (let d = 0; d < half; d++) {
          const c = cos[table + d]!;
          const s = sign * sin[table + d]!;
          const lo = x[row + d]!;
          const hi = x[row + d + half]!;
          out[row + d] = lo * c - hi * s;
          out[row + d + half] = hi * c + lo * s;
        }
      }
    }
  }
}

/**
 * The rotary geometry alone: rotate_half pairs dimension d with d + Dh/2, so Dh must be even,
 * and the angle tables hold one batch row or B.
 * @throws ShapeError when Dh is odd or Bc is neither 1 nor B
 */
function checkRopeGeometry(g: RopeGeometry): void {
  if (g.Dh % 2 !== 0) throw new ShapeError("rope", `head dim ${g.Dh} is odd`);
  if (g.Bc !== 1 && g.Bc !== g.B) throw new ShapeError("rope", `cos/sin batch ${g.Bc} is neither 1 nor B = ${g.B}`);
}

/**
 * The size check of the rotary embedding: x [B, H, T, Dh], cos and sin [Bc, T, Dh/2].
 * @returns the element count of out [B, H, T, Dh]
 * @throws ShapeError as checkRopeGeometry, or for a storage too small
 */
export function checkRope(x: Sized, cos: Sized, sin: Sized, g: RopeGeometry): number {
  checkRopeGeometry(g);
  const n = g.B * g.H * g.T * g.Dh;
  need("rope", "x", x, n);
  need("rope", "cos", cos, (g.Bc * g.T * g.Dh) / 2);
  need("rope", "sin", sin, (g.Bc * g.T * g.Dh) / 2);
  return n;
}

/**
 * rope on a host-memory device: x, cos and sin of one float dtype, the size check, the output,
 * then `compute` on the host arrays (the reference on cpu; the wasm device's kernel, wasm/rope.wasm.ts).
 */
export function ropeOnHost<D extends CpuBackend>(
  compute: (device: D, x: HostArray, cos: HostArray, sin: HostArray, out: HostArray, g: RopeGeometry) => void,
): KernelOf<typeof ropeOp, D> {
  return (device, x, cos, sin, g) => {
    const [hx, hc, hs] = floatArgs("rope", [x, cos, sin]);
    const out = device.allocate(x.dtype, checkRope(x, cos, sin, g));
    compute(device, hx!, hc!, hs!, out, g);
    return device.wrap(out);
  };
}

registerKernel(ropeOp, "cpu", ropeOnHost((_cpu, ...args) => ropeRef(...args)));
