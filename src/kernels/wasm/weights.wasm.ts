import { NF4_BLOCK, NF4_CODE } from "../../tensor/nf4.ts";
import { gatherWeightOp, matmulWeightOp } from "../../tensor/ops/weights.ts";
import type { HostWeight } from "../../tensor/weight.ts";
import { registerKernel } from "../registry.ts";
import { gatherWeightOnHost, gatherWeightRef, matmulWeightOnHost, matmulWeightRef } from "../weights.ts";
import type { WasmBackend } from "./backend.ts";
import { matmulKernel } from "./matmul.wasm.ts";
import type { Code, Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, f32, f32x4, forEachUnit, forRange, get, i32, i32x4, ifElse, inc, seq, set, v128 } from "./module.ts";

/**
 * The packed-weight kernels of the `wasm` device (bf16, f16, NF4; src/tensor/weight.ts): one
 * WebAssembly module of row decoders,
 *   decode_<dtype>(src, absmax, table, ids, r0, rows, K, dst, tid, threads):
 *   dst[i, :] = W[r, :] as f32 for i < rows, r = ids[i] (ids != 0) or r0 + i, W [*, K] packed
 *   at src (NF4: its absmax at absmax and the 16 code values, f32, at table); rows split
 *   round-robin between threads.
 * Decoding is exact, as the reference's (src/kernels/weights.ts): bf16 is the top half of an
 * f32 (a 16-bit shift); f16 is rebuilt as Giesen's "half to float" does it, 8 at a time:
 * (h & 0x7fff) << 13 read as an f32 and multiplied by 2^112 is the value for normal and
 * subnormal halves alike (the multiply only moves the exponent), a result >= 2^16 came from an
 * infinity or NaN and gets the all-ones exponent, then the sign bit; NF4 is
 * f32(code[q] * absmax[i / 64]), one f32 multiply of two f32 values, as the reference rounds it.
 *
 * The products decode a slice of W's rows into an f32 temporary at a time (CHUNK_ELEMENTS) and
 * run the f32 matmul kernels on it, so only the packed form stays in memory and the decoding
 * (N K operations) is shared by all M rows of x. Each output is one f32 kernel's sum, in its
 * fixed order: the same on any thread count.
 */

/** Decoded elements per slice of W: 32 MiB of f32, so small models' matrices decode in one piece. */
const CHUNK_ELEMENTS = 1 << 23;

const c = i32.const;
const DTYPES = ["bf16", "f16", "nf4"] as const;

/** Export name of a dtype's decoder. */
const decodeExport = <D extends HostWeight["dtype"]>(dtype: D) => `decode_${dtype}` as const;

/** The body that decodes one row: 8 elements per step from p (packed) into o (f32). */
type RowDecoder = (fn: FunctionBuilder, p: Local, o: Local, flat: Local, K: Local, absmax: Local, table: Local) => Code;

/** 8 u16 at p -> two f32x4 at o, each lane through `f` (i32 lanes holding the u16). */
function sixteenBit(f: (h: Code, fn: FunctionBuilder) => Code): RowDecoder {
  return (fn, p, o, _flat, K) => {
    const [k, h] = [fn.local(T.i32), fn.local(T.v128)];
    return forRange(
      k,
      c(0),
      get(K),
      c(8),
      seq(
        set(h, v128.load(get(p))),
        v128.store(get(o), f(i32x4.extend_low_i16x8_u(get(h)), fn)),
        v128.store(get(o), f(i32x4.extend_high_i16x8_u(get(h)), fn), 16),
        inc(p, c(16)),
        inc(o, c(32)),
      ),
    );
  };
}

const splatI = (n: number) => i32x4.splat(c(n));
const bf16: RowDecoder = sixteenBit((h) => i32x4.shl(h, c(16)));
const f16: RowDecoder = sixteenBit((h, fn) => {
  const [t, v] = [fn.local(T.v128), fn.local(T.v128)];
  return seq(
    set(t, h),
    set(v, f32x4.mul(i32x4.shl(v128.and(get(t), splatI(0x7fff)), c(13)), f32x4.splat(f32.const(2 ** 112)))),
    // inf / NaN: exponent all ones, mantissa kept
    set(v, v128.or(get(v), v128.and(f32x4.ge(get(v), f32x4.splat(f32.const(65536))), splatI(0x7f800000)))),
    v128.or(get(v), i32x4.shl(v128.and(get(t), splatI(0x8000)), c(16))),
  );
});
/** NF4: 4 bytes (8 indices, even element in the high nibble) share one absmax (8 divides 64). */
const nf4: RowDecoder = (fn, p, o, flat, K, absmax, table) => {
  const [k, b] = [fn.local(T.i32), fn.local(T.i32)];
  const am = fn.local(T.f32);
  const code = (q: Code) => f32.load(i32.add(get(table), i32.shl(q, c(2))));
  return forRange(
    k,
    c(0),
    get(K),
    c(8),
    seq(
      set(am, f32.load(i32.add(get(absmax), i32.shl(i32.shr_u(i32.add(get(flat), get(k)), c(Math.log2(NF4_BLOCK))), c(2))))),
      ...[0, 1, 2, 3].map((j) =>
        seq(
          set(b, i32.load8_u(get(p), j)),
          f32.store(get(o), f32.mul(code(i32.shr_u(get(b), c(4))), get(am)), 8 * j),
          f32.store(get(o), f32.mul(code(i32.and(get(b), c(15))), get(am)), 8 * j + 4),
        ),
      ),
      inc(p, c(4)),
      inc(o, c(32)),
    ),
  );
};
const DECODERS: Record<HostWeight["dtype"], { decoder: RowDecoder; bytesLog2: number }> = {
  bf16: { decoder: bf16, bytesLog2: 1 },
  f16: { decoder: f16, bytesLog2: 1 },
  // half a byte per element: the row's byte offset is flat / 2
  nf4: { decoder: nf4, bytesLog2: -1 },
};

function decodeKernel(dtype: HostWeight["dtype"]): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder(decodeExport(dtype), new Array(10).fill(T.i32));
  const [src, absmax, table, ids, r0, rows, K, dst, tid, threads] = fn.params as Local[] as Local[] & { length: 10 };
  const [i, r, flat, p, o] = Array.from({ length: 5 }, () => fn.local(T.i32));
  const { decoder, bytesLog2 } = DECODERS[dtype];
  const rowBytes = bytesLog2 >= 0 ? i32.shl(get(flat), c(bytesLog2)) : i32.shr_u(get(flat), c(1));
  const body = forEachUnit(
    i!,
    get(rows!),
    tid!,
    threads!,
    seq(
      ifElse(get(ids!), set(r!, i32.load(i32.add(get(ids!), i32.shl(get(i!), c(2))))), set(r!, i32.add(get(r0!), get(i!)))),
      set(flat!, i32.mul(get(r!), get(K!))),
      set(p!, i32.add(get(src!), rowBytes)),
      set(o!, i32.add(get(dst!), i32.shl(i32.mul(get(i!), get(K!)), c(2)))),
      decoder(fn, p!, o!, flat!, K!, absmax!, table!),
    ),
  );
  return { fn, body };
}

/** The module: decode_bf16, decode_f16, decode_nf4. */
export function weightsModule(shared: boolean): Uint8Array {
  return buildModule(shared, DTYPES.map(decodeKernel));
}

/** Export names of the module's kernels, in its order. */
export const WEIGHT_KERNELS = DTYPES.map(decodeExport);

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
  const table = w.dtype === "nf4" ? (wasm.allocate("f32", 16) as Float32Array) : null;
  try {
    table?.set(NF4_CODE);
    const args = [parts.src, parts.absmax, table?.byteOffset ?? 0, ids?.byteOffset ?? 0, r0, rows, K, dst.byteOffset];
    wasm.call(decodeExport(w.dtype), args, wasm.rowThreads(rows, K));
  } finally {
    if (table) wasm.release(table);
  }
}

/**
 * matmulWeightRef on the device, after matmulWeightOnHost's checks: "nt" out [M, N] = x [M, K] @ W^T, "nn" out [M, K] = x [M, N] @ W,
 * W [N, K] packed, f32 sums in the f32 matmul kernels' order (the reference sums in doubles).
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
  const chunk = Math.max(1, Math.min(N, Math.floor(CHUNK_ELEMENTS / K)));
  const temps: Float32Array[] = [];
  const temp = (n: number) => {
    const a = wasm.allocate("f32", n) as Float32Array;
    temps.push(a);
    return a;
  };
  try {
    const wc = temp(chunk * K);
    // nt: per slice, out[:, n0:n1] = x @ Wc^T (into out itself when it is all of N or M = 1, else a temporary copied in)
    // nn: per slice, out (+)= x[:, n0:n1] @ Wc (x's columns copied out when sliced, the slices' products added up)
    const part = form === "nt" ? (M > 1 && chunk < N ? temp(M * chunk) : null) : chunk < N ? temp(M * K) : null;
    const xs = form === "nn" && chunk < N ? temp(M * chunk) : null;
    for (let n0 = 0; n0 < N; n0 += chunk) {
      const nb = Math.min(chunk, N - n0);
      const wv = wc.subarray(0, nb * K);
      decodeRows(wasm, w, parts, null, n0, nb, K, wv);
      if (form === "nt") {
        const g = { batch: 1, M, N: nb, K, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 };
        if (part === null) matmulKernel(wasm, x, wv, M === 1 ? out.subarray(n0, n0 + nb) : out, g);
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
 * gatherWeightRef on the device, after gatherWeightOnHost's checks: out[n, :] = W[ids[n], :] decoded, W [V, D] packed.
 * @throws RangeError naming the id and its index when an id is outside [0, V) (the reference's).
 */
function gatherWeightKernel(wasm: WasmBackend, w: HostWeight, V: number, D: number, ids: Int32Array, out: Float32Array): void {
  const parts = ownedParts(wasm, w);
  if (!parts || !wasm.owns(ids) || !wasm.owns(out)) return gatherWeightRef(w, V, D, ids, out);
  for (let n = 0; n < ids.length; n++) {
    const id = ids[n]!;
    if (id < 0 || id >= V) throw new RangeError(`gather: id ${id} at index ${n} is outside [0, ${V})`);
  }
  decodeRows(wasm, w, parts, ids, 0, ids.length, D, out);
}

registerKernel(matmulWeightOp, "wasm", matmulWeightOnHost(matmulWeightKernel));
registerKernel(gatherWeightOp, "wasm", gatherWeightOnHost(gatherWeightKernel));
