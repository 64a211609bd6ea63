import type { HostArray } from "../../tensor/dtype.ts";
import type { AdamWStep } from "../../tensor/optim.ts";
import { adamwOp } from "../../tensor/optim.ts";
import { adamwOnHost, adamwRef } from "../adamw.ts";
import { registerKernel } from "../registry.ts";
import type { WasmBackend } from "./backend.ts";
import { f32Bits } from "./pool.ts";
import type { Code, Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, f32, f32x4, forEachUnit, get, i32, ifElse, inc, seq, set, v128, whileLoop } from "./module.ts";

/**
 * One AdamW step on the `wasm` device (one WebAssembly SIMD kernel, f32, in place), the update
 * of src/kernels/adamw.ts (Loshchilov & Hutter 2019, PyTorch's decoupled weight decay):
 *   adamw(p, g, m, v, n, beta1, 1 - beta1, beta2, 1 - beta2, lr, eps, weightDecay, bc1, bc2, tid, threads)
 *   (the floats as their f32 bits; bc = 1 - beta^step, computed in doubles by the caller):
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
 *   p = p - lr (m / bc1 / (sqrt(v / bc2) + eps) + weightDecay p).
 * Elements go in chunks of CHUNK, round-robin between threads, 4 per vector and the tail one at
 * a time through lane 0 of the same expressions. In f32 (the reference computes in doubles and
 * rounds once): about 10 roundings deep, a few ulp of each result.
 */

const CHUNK = 4096;
const c = i32.const;

function adamwKernel(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("adamw", new Array(16).fill(T.i32));
  const [p, g, m, v, n, ...rest] = fn.params as Local[];
  const [b1, nb1, b2, nb2, lr, eps, wd, bc1, bc2, tid, threads] = rest as Local[] & { length: 11 };
  const [u, units, e, end, off] = Array.from({ length: 5 }, () => fn.local(T.i32));
  const k = Array.from({ length: 9 }, () => fn.local(T.v128));
  const [gv, mv, vv, pv] = Array.from({ length: 4 }, () => fn.local(T.v128));
  const consts = [b1, nb1, b2, nb2, lr, eps, wd, bc1, bc2];
  const K = (i: number) => get(k[i]!);
  const at = (base: Local) => i32.add(get(base), get(off!));
  const step = (vector: boolean) => {
    const load = (base: Local) => (vector ? v128.load(at(base)) : v128.load32_splat(at(base)));
    const store = (base: Local, x: Code) => (vector ? v128.store(at(base), x) : f32.store(at(base), f32x4.extract_lane(x, 0)));
    const lanes = vector ? 4 : 1;
    return seq(
      set(gv, load(g!)),
      set(mv, f32x4.add(f32x4.mul(K(0), load(m!)), f32x4.mul(K(1), get(gv)))),
      set(vv, f32x4.add(f32x4.mul(K(2), load(v!)), f32x4.mul(f32x4.mul(K(3), get(gv)), get(gv)))),
      set(pv, load(p!)),
      store(
        p!,
        f32x4.sub(
          get(pv),
          f32x4.mul(K(4), f32x4.add(f32x4.div(f32x4.div(get(mv), K(7)), f32x4.add(f32x4.sqrt(f32x4.div(get(vv), K(8))), K(5))), f32x4.mul(K(6), get(pv)))),
        ),
      ),
      store(m!, get(mv)),
      store(v!, get(vv)),
      inc(off!, c(4 * lanes)),
      inc(e!, c(lanes)),
    );
  };
  const body = seq(
    ...consts.map((l, i) => set(k[i]!, f32x4.splat(f32.reinterpret_i32(get(l!))))),
    set(units!, i32.div_s(i32.add(get(n!), c(CHUNK - 1)), c(CHUNK))),
    forEachUnit(
      u!,
      get(units!),
      tid!,
      threads!,
      seq(
        set(e!, i32.mul(get(u!), c(CHUNK))),
        set(end!, i32.add(get(e!), c(CHUNK))),
        ifElse(i32.gt_s(get(end!), get(n!)), set(end!, get(n!))),
        set(off!, i32.shl(get(e!), c(2))),
        whileLoop(i32.le_s(i32.add(get(e!), c(4)), get(end!)), step(true)),
        whileLoop(i32.lt_s(get(e!), get(end!)), step(false)),
      ),
    ),
  );
  return { fn, body };
}

/** The module: adamw. */
export function adamwModule(shared: boolean): Uint8Array {
  return buildModule(shared, [adamwKernel()]);
}

/** Export names of the module's kernels. */
export const ADAMW_KERNELS = ["adamw"] as const;

/** adamwRef on the device for f32 arrays in its memory (else the reference), after adamwOnHost's checks. */
function adamwKernelOnDevice(wasm: WasmBackend, param: HostArray, grad: HostArray, m: HostArray, v: HostArray, h: AdamWStep): void {
  if (!wasm.ownF32([param, grad, m, v])) return adamwRef(param, grad, m, v, h);
  const n = param.length;
  if (n === 0) return;
  const floats = [h.beta1, 1 - h.beta1, h.beta2, 1 - h.beta2, h.lr, h.eps, h.weightDecay, 1 - Math.pow(h.beta1, h.step), 1 - Math.pow(h.beta2, h.step)];
  wasm.call("adamw", [param.byteOffset, grad.byteOffset, m.byteOffset, v.byteOffset, n, ...floats.map(f32Bits)], wasm.rowThreads(1, n));
}

registerKernel(adamwOp, "wasm", adamwOnHost(adamwKernelOnDevice));
