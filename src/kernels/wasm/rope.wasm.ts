import type { HostArray } from "../../tensor/dtype.ts";
import type { RopeGeometry } from "../../tensor/ops/rope.ts";
import { ropeOp } from "../../tensor/ops/rope.ts";
import { registerKernel } from "../registry.ts";
import { ropeOnHost, ropeRef } from "../rope.ts";
import type { WasmBackend } from "./backend.ts";
import { f32Bits } from "./pool.ts";
import type { Code, Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, f32, f32x4, forEachUnit, get, i32, inc, seq, set, v128, whileLoop } from "./module.ts";

/**
 * Rotary position embedding on the `wasm` device (one WebAssembly SIMD kernel, f32), the
 * Hugging Face rotate_half layout of src/kernels/rope.ts:
 *   rope(x, cos, sin, out, B, H, T, Dh, Bc, signBits, tid, threads): for each row (b, h, t) of
 *   x [B, H, T, Dh] and d < Dh/2, with c, s = cos, sin [(Bc = 1 ? 0 : b), t, d] and s times
 *   sign (-1 for the inverse rotation, the backward pass):
 *     out[d] = x[d] c - x[d + Dh/2] s,   out[d + Dh/2] = x[d + Dh/2] c + x[d] s.
 * Rows are split round-robin between threads; 4 pairs per vector, the rest one at a time through
 * lane 0 of the same expressions. Each output is two f32 products and a sum (the reference
 * rounds once from doubles): within 2 ulp of |x| |c| + |x| |s|.
 */

const c = i32.const;

function ropeKernel(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("rope", new Array(12).fill(T.i32));
  const [x, cos, sin, out, B, H, Tn, Dh, Bc, signBits, tid, threads] = fn.params as Local[] as Local[] & { length: 12 };
  const [r, t, b, half, px, po, pt, d] = Array.from({ length: 8 }, () => fn.local(T.i32));
  const [lo, hi, cv, sv, sign] = Array.from({ length: 5 }, () => fn.local(T.v128));
  const halfBytes = i32.shl(get(half!), c(2));
  /** One step over `lanes` pairs: load (vector or splat), rotate, store (vector or lane 0). */
  const step = (vector: boolean) => {
    const load = (p: Code, off: Code = c(0)) => (vector ? v128.load(i32.add(p, off)) : v128.load32_splat(i32.add(p, off)));
    const store = (p: Code, v: Code) => (vector ? v128.store(p, v) : f32.store(p, f32x4.extract_lane(v, 0)));
    const n = vector ? 4 : 1;
    return seq(
      set(lo, load(get(px!))),
      set(hi, load(get(px!), halfBytes)),
      set(cv, load(get(pt!), get(cos!))),
      set(sv, f32x4.mul(load(get(pt!), get(sin!)), get(sign))),
      store(get(po!), f32x4.sub(f32x4.mul(get(lo), get(cv)), f32x4.mul(get(hi), get(sv)))),
      store(i32.add(get(po!), halfBytes), f32x4.add(f32x4.mul(get(hi), get(cv)), f32x4.mul(get(lo), get(sv)))),
      inc(px!, c(4 * n)),
      inc(po!, c(4 * n)),
      inc(pt!, c(4 * n)),
      inc(d!, c(n)),
    );
  };
  const body = seq(
    set(half!, i32.div_s(get(Dh!), c(2))),
    set(sign, f32x4.splat(f32.reinterpret_i32(get(signBits!)))),
    forEachUnit(
      r!,
      i32.mul(i32.mul(get(B!), get(H!)), get(Tn!)),
      tid!,
      threads!,
      seq(
        set(t!, i32.rem_s(get(r!), get(Tn!))),
        set(b!, i32.div_s(i32.div_s(get(r!), get(Tn!)), get(H!))),
        set(px!, i32.add(get(x!), i32.shl(i32.mul(get(r!), get(Dh!)), c(2)))),
        set(po!, i32.add(get(out!), i32.shl(i32.mul(get(r!), get(Dh!)), c(2)))),
        // pt: the byte offset of this row's angles in cos and sin (b = 0 when Bc = 1)
        set(pt!, i32.shl(i32.mul(i32.add(i32.mul(i32.rem_s(get(b!), get(Bc!)), get(Tn!)), get(t!)), get(half!)), c(2))),
        set(d!, c(0)),
        whileLoop(i32.le_s(i32.add(get(d!), c(4)), get(half!)), step(true)),
        whileLoop(i32.lt_s(get(d!), get(half!)), step(false)),
      ),
    ),
  );
  return { fn, body };
}

/** The module: rope. */
export function ropeModule(shared: boolean): Uint8Array {
  return buildModule(shared, [ropeKernel()]);
}

/** Export names of the module's kernels. */
export const ROPE_KERNELS = ["rope"] as const;

/**
 * ropeRef on the device for f32 arrays in its memory (else the reference), after ropeOnHost's
 * checks: x [B, H, T, Dh]; cos, sin [Bc, T, Dh/2]; out [B, H, T, Dh].
 */
function ropeKernelOnDevice(wasm: WasmBackend, x: HostArray, cos: HostArray, sin: HostArray, out: HostArray, g: RopeGeometry): void {
  if (!wasm.ownF32([x, cos, sin, out])) return ropeRef(x, cos, sin, out, g);
  const rows = g.B * g.H * g.T;
  if (rows * g.Dh === 0) return;
  // Bc = 1 shares one table: b mod 1 = 0; Bc = B: b mod B = b.
  const args = [x.byteOffset, cos.byteOffset, sin.byteOffset, out.byteOffset, g.B, g.H, g.T, g.Dh, g.Bc, f32Bits(g.inverse ? -1 : 1)];
  wasm.call("rope", args, wasm.rowThreads(rows, g.Dh));
}

registerKernel(ropeOp, "wasm", ropeOnHost(ropeKernelOnDevice));
