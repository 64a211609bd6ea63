/**
 * The measured ceiling of WebAssembly's 128-bit SIMD on this machine: the f32 throughput of a
 * generated kernel that does nothing but independent multiply-add chains on every thread of the
 * wasm device's pool, so no wasm kernel (matmul included) can go faster. The native FP32 peak
 * (cpu_peak.ts) is higher: wasm has 4 lanes where AVX2 has 8 and AVX-512 16, and its
 * multiply-add is two instructions (f32x4.mul, then f32x4.add) unless relaxed SIMD's
 * f32x4.relaxed_madd is there (one fused instruction), which the kernel uses exactly when the
 * matmul kernels do.
 *
 * The kernel, chains(out, iters, tid, threads): CHAINS accumulators, each updated
 * acc = acc * a + b (a = b = 0.5: the values stay at 1, never denormal), ROUNDS times per loop
 * iteration, iters iterations; then their sum is stored at out + 16 tid so the work is live.
 * Each chain's update depends on its previous one, so CHAINS independent chains must cover the
 * latency of a multiply then an add (about 3 + 3 cycles on current x86 cores, which issue 2
 * multiplies and 2 adds per cycle: about 12 in flight). On the 2-core Zen 5 this was written on,
 * 8-14 chains gave 86-95% of what 16, 20 and 24 gave (those three agree within noise), so 16.
 */
import { createHash } from "node:crypto";
import type { Code, Local } from "../src/kernels/wasm/module.ts";
import { FunctionBuilder, T, buildModule, f32, f32x4, forRange, get, i32, seq, set, v128 } from "../src/kernels/wasm/module.ts";
import { WasmPool } from "../src/kernels/wasm/pool.ts";

const CHAINS = 16;
const ROUNDS = 4;
/** f32 flops of one multiply-add on a vector: 4 lanes x 2. */
const FLOPS_PER_MADD = 8;

export interface SimdCeiling {
  gflops: number;
  threads: number;
  /** How it was measured. */
  how: string;
}

function chainsModule(relaxed: boolean): Uint8Array {
  const fn = new FunctionBuilder("chains", [T.i32, T.i32, T.i32, T.i32]);
  const [out, iters, tid] = fn.params as [Local, Local, Local, Local];
  const acc = Array.from({ length: CHAINS }, () => fn.local(T.v128));
  const [a, b, sum] = [fn.local(T.v128), fn.local(T.v128), fn.local(T.v128)];
  const it = fn.local(T.i32);
  const madd = (x: Code): Code => (relaxed ? f32x4.relaxed_madd(x, get(a), get(b)) : f32x4.add(f32x4.mul(x, get(a)), get(b)));
  const round = acc.flatMap((l) => set(l, madd(get(l))));
  const body = seq(
    set(a, f32x4.splat(f32.const(0.5))),
    set(b, f32x4.splat(f32.const(0.5))),
    ...acc.map((l) => set(l, f32x4.splat(f32.const(1)))),
    forRange(it, i32.const(0), get(iters), i32.const(1), seq(...Array.from({ length: ROUNDS }, () => round))),
    set(sum, v128.zero()),
    ...acc.map((l) => set(sum, f32x4.add(get(sum), get(l)))),
    v128.store(i32.add(get(out), i32.shl(get(tid), i32.const(4))), get(sum)),
  );
  return buildModule(true, [{ fn, body }]);
}

/**
 * Runs the chains kernel on `threads` threads (a pool of its own over a small shared memory),
 * growing the iteration count until one dispatch takes >= 100 ms, then keeps the best of 5.
 * @param relaxed use relaxed SIMD's fused multiply-add (as the matmul kernels do when it is on)
 */
export async function wasmSimdCeiling(threads: number, relaxed: boolean): Promise<SimdCeiling> {
  const bytes = chainsModule(relaxed);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  const pool = await WasmPool.create([await WebAssembly.compile(bytes)], memory, [{ module: 0, name: "chains" }], threads);
  try {
    const time = (iters: number) => {
      const t0 = performance.now();
      pool.run(0, [0, iters]);
      return performance.now() - t0;
    };
    let iters = 1 << 14;
    while (time(iters) < 100) iters *= 2;
    let best = Infinity;
    for (let r = 0; r < 5; r++) best = Math.min(best, time(iters));
    const flops = threads * iters * ROUNDS * CHAINS * FLOPS_PER_MADD;
    const gflops = flops / best / 1e6;
    const op = relaxed ? "f32x4.relaxed_madd" : "f32x4.mul + f32x4.add";
    const sum = new Float32Array(memory.buffer, 0, 4 * threads);
    if (!sum.every((x) => x === CHAINS)) throw new Error(`wasm SIMD ceiling: the kernel's chains ended at ${Array.from(sum).join(", ")}, not ${CHAINS} (each chain stays at 1)`);
    return {
      gflops,
      threads,
      how: `${threads} threads x ${CHAINS} independent f32x4 chains of ${op} (8 flop each), ${iters} x ${ROUNDS} rounds in ${best.toFixed(1)} ms (best of 5) = ${gflops.toFixed(1)} GFLOP/s measured; module sha256 ${createHash("sha256").update(bytes).digest("hex").slice(0, 12)}`,
    };
  } finally {
    pool.destroy();
  }
}
