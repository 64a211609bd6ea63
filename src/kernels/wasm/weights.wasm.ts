import { NF4_BLOCK, NF4_CODE } from "../../tensor/nf4.ts";
import { gatherWeightOp, matmulWeightOp } from "../../tensor/ops/weights.ts";
import type { HostWeight } from "../../tensor/weight.ts";
import { registerKernel } from "../registry.ts";
import { gatherWeightOnHost, gatherWeightRef, matmulWeightOnHost, matmulWeightRef } from "../weights.ts";
import type { WasmBackend } from "./backend.ts";
import { matmulKernel } from "./matmul.wasm.ts";
import type { Code, Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, f32, f32x4, forEachUnit, forRange, get, i32, i32x4, ifElse, i8x16, inc, seq, set, sumLanes, v128 } from "./module.ts";

/**
 * The packed-weight kernels of the `wasm` device (bf16, f16, NF4; src/tensor/weight.ts), one
 * WebAssembly SIMD module (decode8 below says how each dtype decodes):
 * - decode_<dtype>: rows of W [*, K] (a range, or the rows an id list names) decoded to f32;
 * - gemv_<dtype>: out = W x for one x [K], decoding in registers (decoding's product).
 * Decoding is exact, as the reference's (src/kernels/weights.ts): bf16 is the top half of an
 * f32; f16 is rebuilt as Giesen's "half to float" does it ((h & 0x7fff) << 13 read as an f32
 * and multiplied by 2^112 is the value for normal and subnormal halves alike, the multiply only
 * moving the exponent); NF4 is f32(code[q] * absmax[i / 64]), one f32 multiply of two f32
 * values, as the reference rounds it.
 *
 * x W^T with M > 1 rows and g W decode a slice of W's rows into an f32 temporary at a time
 * (CHUNK_ELEMENTS) and run the f32 matmul kernels on it, so only the packed form stays in memory
 * and decoding (N K operations) is shared by all M rows of x. Each output is one f32 kernel's
 * sum, in its fixed order: the same on any thread count.
 */

/** Decoded elements per slice of W: 4 MiB of f32, decoded and then read again while in cache. */
const CHUNK_ELEMENTS = 1 << 20;

const c = i32.const;
const DTYPES = ["bf16", "f16", "nf4"] as const;

/** Export names of a dtype's decoder and matrix-vector product. */
const decodeExport = <D extends HostWeight["dtype"]>(dtype: D) => `decode_${dtype}` as const;
const gemvExport = <D extends HostWeight["dtype"]>(dtype: D) => `gemv_${dtype}` as const;

/** Packed bytes of 8 weights, by dtype. */
const BYTES_PER_8: Record<HostWeight["dtype"], number> = { bf16: 16, f16: 16, nf4: 4 };

const splatI = (n: number) => i32x4.splat(c(n));
/** Byte j of each NF4 code value's f32 bits, as one vector per j (the tables i8x16.swizzle looks up). */
const NF4_PLANES = [0, 1, 2, 3].map((j) => {
  const bytes = new Uint8Array(NF4_CODE.buffer, NF4_CODE.byteOffset, 64);
  return Array.from({ length: 16 }, (_, i) => bytes[4 * i + j]!);
});
/** Interleaves the low 8 bytes of a and b: a0 b0 a1 b1 ... a7 b7; and the high 8. */
const ZIP_LOW = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
const ZIP_HIGH = ZIP_LOW.map((l) => l + 8);
/** Interleaves the 16-bit lanes 0-3 of a and b, and 4-7. */
const ZIP16_LOW = [0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23];
const ZIP16_HIGH = ZIP16_LOW.map((l) => l + 8);

/**
 * Code that decodes 8 weights (flat index `flat` of the first, a multiple of 8) at byte address
 * `p` into the f32x4 locals lo (weights 0-3) and hi (4-7):
 * - bf16: the u16 as the top half of an f32 (a 16-bit shift);
 * - f16: (h & 0x7fff) << 13 read as an f32 times 2^112, the all-ones exponent where that is
 *   >= 2^16 (infinities, NaNs), then the sign;
 * - nf4: the 8 nibbles as byte lanes, each code value's 4 bytes looked up by i8x16.swizzle in
 *   NF4_PLANES and zipped back into f32 lanes, times absmax[flat / 64] (8 weights share it).
 */
function decode8(fn: FunctionBuilder, dtype: HostWeight["dtype"], absmax: Local): { lo: Local; hi: Local; code: (p: Code, flat: Code) => Code } {
  const [lo, hi, t] = [fn.local(T.v128), fn.local(T.v128), fn.local(T.v128)];
  if (dtype === "nf4") {
    const [a, b] = [fn.local(T.v128), fn.local(T.v128)];
    const plane = (j: number) => i8x16.swizzle(v128.const(NF4_PLANES[j]!), get(t));
    const am = fn.local(T.v128);
    return {
      lo,
      hi,
      code: (p, flat) =>
        seq(
          set(t, v128.load32_zero(p)),
          // byte lanes 2i, 2i + 1: the high then the low nibble of byte i (the even weight is high)
          set(t, i8x16.shuffle(i8x16.shr_u(get(t), c(4)), v128.and(get(t), v128.const(new Array<number>(16).fill(15))), ZIP_LOW)),
          set(a, i8x16.shuffle(plane(0), plane(1), ZIP_LOW)),
          set(b, i8x16.shuffle(plane(2), plane(3), ZIP_LOW)),
          set(am, v128.load32_splat(i32.add(get(absmax), i32.shl(i32.shr_u(flat, c(Math.log2(NF4_BLOCK))), c(2))))),
          set(lo, f32x4.mul(i8x16.shuffle(get(a), get(b), ZIP16_LOW), get(am))),
          set(hi, f32x4.mul(i8x16.shuffle(get(a), get(b), ZIP16_HIGH), get(am))),
        ),
    };
  }
  const v = fn.local(T.v128);
  const toF32 = (h: Code): Code => {
    if (dtype === "bf16") return i32x4.shl(h, c(16));
    return seq(
      set(v, f32x4.mul(i32x4.shl(v128.and(h, splatI(0x7fff)), c(13)), f32x4.splat(f32.const(2 ** 112)))),
      set(v, v128.or(get(v), v128.and(f32x4.ge(get(v), f32x4.splat(f32.const(65536))), splatI(0x7f800000)))),
      v128.or(get(v), i32x4.shl(v128.and(h, splatI(0x8000)), c(16))),
    );
  };
  const [hl, hh] = [fn.local(T.v128), fn.local(T.v128)];
  return {
    lo,
    hi,
    code: (p) =>
      seq(
        set(t, v128.load(p)),
        set(hl, i32x4.extend_low_i16x8_u(get(t))),
        set(hh, i32x4.extend_high_i16x8_u(get(t))),
        set(lo, toF32(get(hl))),
        set(hi, toF32(get(hh))),
      ),
  };
}

/**
 * NF4's 16 weights at a time (8 bytes: flat a multiple of 16, so one absmax): one index vector
 * fills all 16 lanes of each plane lookup, half the swizzles per weight of decode8. The 4 f32x4
 * results (weights 0-3, ..., 12-15) are decode8's lo and hi for weights 0-7, then 8-15.
 */
function nf4Decode16(fn: FunctionBuilder, absmax: Local): { vs: Local[]; code: (p: Code, flat: Code) => Code } {
  const vs = [0, 1, 2, 3].map(() => fn.local(T.v128));
  const [t, am] = [fn.local(T.v128), fn.local(T.v128)];
  const planes = [0, 1, 2, 3].map(() => fn.local(T.v128));
  const [a, b] = [fn.local(T.v128), fn.local(T.v128)];
  const [a2, b2] = [fn.local(T.v128), fn.local(T.v128)];
  return {
    vs,
    code: (p, flat) =>
      seq(
        set(t, v128.load64_zero(p)),
        set(t, i8x16.shuffle(i8x16.shr_u(get(t), c(4)), v128.and(get(t), v128.const(new Array<number>(16).fill(15))), ZIP_LOW)),
        ...planes.map((l, j) => set(l, i8x16.swizzle(v128.const(NF4_PLANES[j]!), get(t)))),
        set(a, i8x16.shuffle(get(planes[0]!), get(planes[1]!), ZIP_LOW)),
        set(a2, i8x16.shuffle(get(planes[0]!), get(planes[1]!), ZIP_HIGH)),
        set(b, i8x16.shuffle(get(planes[2]!), get(planes[3]!), ZIP_LOW)),
        set(b2, i8x16.shuffle(get(planes[2]!), get(planes[3]!), ZIP_HIGH)),
        set(am, v128.load32_splat(i32.add(get(absmax), i32.shl(i32.shr_u(flat, c(Math.log2(NF4_BLOCK))), c(2))))),
        set(vs[0]!, f32x4.mul(i8x16.shuffle(get(a), get(b), ZIP16_LOW), get(am))),
        set(vs[1]!, f32x4.mul(i8x16.shuffle(get(a), get(b), ZIP16_HIGH), get(am))),
        set(vs[2]!, f32x4.mul(i8x16.shuffle(get(a2), get(b2), ZIP16_LOW), get(am))),
        set(vs[3]!, f32x4.mul(i8x16.shuffle(get(a2), get(b2), ZIP16_HIGH), get(am))),
      ),
  };
}

/**
 * A loop over one row's K weights (k from 0, by 8; NF4 by 16 when K is a multiple of 16),
 * `body(vs, step)` given the decoded f32x4 locals of the step's weights (4 per vector, in order)
 * and run after decoding; p (the packed bytes) advances itself.
 */
function rowLoop(fn: FunctionBuilder, dtype: HostWeight["dtype"], absmax: Local, p: Local, flat: Local, K: Local, k: Local, body: (vs: Local[], weights: number) => Code): Code {
  const d8 = decode8(fn, dtype, absmax);
  const loop8 = forRange(k, c(0), get(K), c(8), seq(d8.code(get(p), i32.add(get(flat), get(k))), body([d8.lo, d8.hi], 8), inc(p, c(BYTES_PER_8[dtype]))));
  if (dtype !== "nf4") return loop8;
  const d16 = nf4Decode16(fn, absmax);
  const loop16 = forRange(k, c(0), get(K), c(16), seq(d16.code(get(p), i32.add(get(flat), get(k))), body(d16.vs, 16), inc(p, c(8))));
  return ifElse(i32.eqz(i32.and(get(K), c(15))), loop16, loop8);
}

/** Byte address of row r's packed weights: src + r K bytes-per-weight. */
const rowAddress = (dtype: HostWeight["dtype"], src: Local, flat: Code) =>
  i32.add(get(src), dtype === "nf4" ? i32.shr_u(flat, c(1)) : i32.shl(flat, c(1)));

/**
 * decode_<dtype>(src, absmax, ids, r0, rows, K, dst, tid, threads): dst[i, :] = W[r, :] as f32
 * for i < rows, r = ids[i] (ids != 0) or r0 + i; rows round-robin between threads.
 */
function decodeKernel(dtype: HostWeight["dtype"]): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder(decodeExport(dtype), new Array(9).fill(T.i32));
  const [src, absmax, ids, r0, rows, K, dst, tid, threads] = fn.params as Local[] as Local[] & { length: 9 };
  const [i, r, flat, p, o, k] = Array.from({ length: 6 }, () => fn.local(T.i32));
  const body = forEachUnit(
    i!,
    get(rows!),
    tid!,
    threads!,
    seq(
      ifElse(get(ids!), set(r!, i32.load(i32.add(get(ids!), i32.shl(get(i!), c(2))))), set(r!, i32.add(get(r0!), get(i!)))),
      set(flat!, i32.mul(get(r!), get(K!))),
      set(p!, rowAddress(dtype, src!, get(flat!))),
      set(o!, i32.add(get(dst!), i32.shl(i32.mul(get(i!), get(K!)), c(2)))),
      rowLoop(fn, dtype, absmax!, p!, flat!, K!, k!, (vs, weights) => seq(...vs.map((v, j) => v128.store(get(o!), get(v), 16 * j)), inc(o!, c(4 * weights)))),
    ),
  );
  return { fn, body };
}

/**
 * gemv_<dtype>(src, absmax, x, out, N, K, tid, threads): out[n] = sum_k W[n, k] x[k] for n < N,
 * decoding 8 weights at a time in registers (decoding's matrix-vector product reads only the
 * packed bytes); rows round-robin between threads, each summed in 8 interleaved partial sums.
 */
function gemvKernel(dtype: HostWeight["dtype"]): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder(gemvExport(dtype), new Array(8).fill(T.i32));
  const [src, absmax, x, out, N, K, tid, threads] = fn.params as Local[] as Local[] & { length: 8 };
  const [n, flat, p, px, k] = Array.from({ length: 5 }, () => fn.local(T.i32));
  const [a0, a1, t] = [fn.local(T.v128), fn.local(T.v128), fn.local(T.v128)];
  const body = forEachUnit(
    n!,
    get(N!),
    tid!,
    threads!,
    seq(
      set(flat!, i32.mul(get(n!), get(K!))),
      set(p!, rowAddress(dtype, src!, get(flat!))),
      set(px!, get(x!)),
      set(a0, v128.zero()),
      set(a1, v128.zero()),
      // vectors alternate between the two accumulators, so the 8 and 16 steps sum alike
      rowLoop(fn, dtype, absmax!, p!, flat!, K!, k!, (vs, weights) =>
        seq(...vs.map((v, j) => set(j % 2 ? a1 : a0, f32x4.add(get(j % 2 ? a1 : a0), f32x4.mul(get(v), v128.load(get(px!), 16 * j))))), inc(px!, c(4 * weights))),
      ),
      set(t, f32x4.add(get(a0), get(a1))),
      f32.store(
        i32.add(get(out!), i32.shl(get(n!), c(2))),
        sumLanes(get(t)),
      ),
    ),
  );
  return { fn, body };
}

/** The module: decode_bf16, decode_f16, decode_nf4, gemv_bf16, gemv_f16, gemv_nf4. */
export function weightsModule(shared: boolean): Uint8Array {
  return buildModule(shared, [...DTYPES.map(decodeKernel), ...DTYPES.map(gemvKernel)]);
}

/** Export names of the module's kernels, in its order. */
export const WEIGHT_KERNELS = [...DTYPES.map(decodeExport), ...DTYPES.map(gemvExport)];

/** The weight's arrays, when every one is a view of the device's memory (else the reference runs). */
function ownedParts(wasm: WasmBackend, w: HostWeight): { src: number; absmax: number } | null {
  if (w.dtype === "nf4") return wasm.owns(w.packed) && wasm.owns(w.absmax) ? { src: w.packed.byteOffset, absmax: w.absmax.byteOffset } : null;
  return wasm.owns(w.bits) ? { src: w.bits.byteOffset, absmax: 0 } : null;
}

/**
 * Decodes `rows` rows of W [*, K] (rows r0.., or ids[i] when `ids` is given: checked already)
 * into dst [rows, K], f32 in the device's memory.
 */
function decodeRows(wasm: WasmBackend, w: HostWeight, parts: { src: number; absmax: number }, ids: Int32Array | null, r0: number, rows: number, K: number, dst: Float32Array): void {
  if (rows === 0) return;
  wasm.call(decodeExport(w.dtype), [parts.src, parts.absmax, ids?.byteOffset ?? 0, r0, rows, K, dst.byteOffset], wasm.rowThreads(rows, K));
}

/**
 * matmulWeightRef on the device, after matmulWeightOnHost's checks: "nt" out [M, N] =
 * x [M, K] @ W^T, "nn" out [M, K] = x [M, N] @ W, W [N, K] packed; f32 sums in the f32 matmul
 * kernels' order (the reference sums in doubles).
 * Runs the reference when an array is not in the device's memory.
 * @param x f32 contiguous; out f32 contiguous, overwritten
 */
function matmulWeightKernel(wasm: WasmBackend, x: Float32Array, w: HostWeight, N: number, K: number, M: number, form: "nt" | "nn", out: Float32Array): void {
  const parts = ownedParts(wasm, w);
  if (!parts || !wasm.owns(x) || !wasm.owns(out)) return matmulWeightRef(x, w, N, K, M, form, out);
  if (M * N * K === 0) {
    out.fill(0);
    return;
  }
  if (M === 1 && form === "nt") {
    // decoding's matrix-vector product: the packed bytes are all it reads
    wasm.call(gemvExport(w.dtype), [parts.src, parts.absmax, x.byteOffset, out.byteOffset, N, K], wasm.rowThreads(N, K));
    return;
  }
  const chunk = Math.max(1, Math.min(N, Math.floor(CHUNK_ELEMENTS / K)));
  const temps: Float32Array[] = [];
  const temp = (n: number) => {
    const a = wasm.allocate("f32", n) as Float32Array;
    temps.push(a);
    return a;
  };
  try {
    const wc = temp(chunk * K);
    // nt: per slice, out[:, n0:n1] = x @ Wc^T (into out itself when it is all of N, else a temporary copied in)
    // nn: per slice, out (+)= x[:, n0:n1] @ Wc (x's columns copied out when sliced, the slices' products added up)
    const part = chunk < N ? temp(M * (form === "nt" ? chunk : K)) : null;
    const xs = form === "nn" && chunk < N ? temp(M * chunk) : null;
    for (let n0 = 0; n0 < N; n0 += chunk) {
      const nb = Math.min(chunk, N - n0);
      const wv = wc.subarray(0, nb * K);
      decodeRows(wasm, w, parts, null, n0, nb, K, wv);
      if (form === "nt") {
        const g = { batch: 1, M, N: nb, K, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 };
        if (part === null) matmulKernel(wasm, x, wv, out, g);
        else {
          const pv = part.subarray(0, M * nb);
          matmulKernel(wasm, x, wv, pv, g);
          for (let m = 0; m < M; m++) out.set(pv.subarray(m * nb, (m + 1) * nb), m * N + n0);
        }
        continue;
      }
      const g = { batch: 1, M, N: K, K: nb, transA: false, transB: false, batchStrideA: 0, batchStrideB: 0 };
      if (xs === null) {
        matmulKernel(wasm, x, wv, out, g);
        continue;
      }
      const xv = xs.subarray(0, M * nb);
      for (let m = 0; m < M; m++) xv.set(x.subarray(m * N + n0, m * N + n0 + nb), m * nb);
      matmulKernel(wasm, xv, wv, n0 === 0 ? out : part!, g);
      if (n0 > 0) wasm.call("binary_add", [out.byteOffset, out.byteOffset, part!.byteOffset, 1, 1, 1, M * K, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1], wasm.rowThreads(M, K));
    }
  } finally {
    for (const a of temps) wasm.release(a);
  }
}

/**
 * gatherWeightRef on the device, after gatherWeightOnHost's checks (every id in [0, V)):
 * out[n, :] = W[ids[n], :] decoded, W [V, D] packed.
 */
function gatherWeightKernel(wasm: WasmBackend, w: HostWeight, V: number, D: number, ids: Int32Array, out: Float32Array): void {
  const parts = ownedParts(wasm, w);
  if (!parts || !wasm.owns(ids) || !wasm.owns(out)) return gatherWeightRef(w, V, D, ids, out);
  decodeRows(wasm, w, parts, ids, 0, ids.length, D, out);
}

registerKernel(matmulWeightOp, "wasm", matmulWeightOnHost(matmulWeightKernel));
registerKernel(gatherWeightOp, "wasm", gatherWeightOnHost(gatherWeightKernel));
