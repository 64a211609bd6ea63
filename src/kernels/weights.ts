import { bf16ToF32, f16ToF32 } from "../tensor/half.ts";
import { gatherWeightOp, matmulWeightOp } from "../tensor/ops/weights.ts";
import type { HostWeight, WeightStorage } from "../tensor/weight.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import { checkIds } from "./embedding.ts";
import { expectDType, hostData, weightData } from "./host.ts";
import type { CpuBackend } from "./cpu.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";
import { NF4_BLOCK, NF4_CODE, nibble } from "../tensor/nf4.ts";

/**
 * The kernels that read a packed weight (bf16, f16, NF4; see src/tensor/weight.ts), as plain
 * TypeScript: the `cpu` device runs them and they specify the WGSL of weights.wgsl.ts. A row of
 * the weight is decoded to f32 at a time, so no f32 copy of the whole weight is ever made.
 */

/**
 * Decodes row `r` of a [rows, cols] host weight into `out` [cols], exactly: a 16-bit value is
 * its f32 value; an NF4 value is f32(NF4_CODE[q] * absmax[i / 64]) for flat index i = r cols + c.
 */
function decodeRow(w: HostWeight, cols: number, r: number, out: Float32Array): void {
  const i0 = r * cols;
  if (w.dtype === "nf4") {
    for (let c = 0; c < cols; c++) out[c] = NF4_CODE[nibble(w.packed, i0 + c)]! * w.absmax[Math.floor((i0 + c) / NF4_BLOCK)]!;
    return;
  }
  const bits = w.bits.subarray(i0, i0 + cols);
  out.set(w.dtype === "bf16" ? bf16ToF32(bits) : f16ToF32(bits));
}

/** All rows x cols values of a host weight, row-major f32. */
export function decodeWeight(w: HostWeight, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) decodeRow(w, cols, r, out.subarray(r * cols, (r + 1) * cols));
  return out;
}

/**
 * The product with a packed weight W [N, K] (N = rows, K = cols), summed in doubles:
 * - "nt": out [M, N] = x [M, K] @ W^T (a Linear's forward, matmulRef with transB);
 * - "nn": out [M, K] = x [M, N] @ W (its input gradient, g W).
 * @param x f32, contiguous
 * @param out f32, contiguous, overwritten
 */
export function matmulWeightRef(x: Float32Array, w: HostWeight, N: number, K: number, M: number, form: "nt" | "nn", out: Float32Array): void {
  const row = new Float32Array(K);
  if (form === "nt") {
    for (let n = 0; n < N; n++) {
      decodeRow(w, K, n, row);
      for (let m = 0; m < M; m++) {
        let acc = 0;
        for (let k = 0; k < K; k++) acc += x[m * K + k]! * row[k]!;
        out[m * N + n] = acc;
      }
    }
    return;
  }
  const acc = new Float64Array(M * K);
  for (let n = 0; n < N; n++) {
    decodeRow(w, K, n, row);
    for (let m = 0; m < M; m++) {
      const g = x[m * N + n]!;
      if (g === 0) continue;
      for (let k = 0; k < K; k++) acc[m * K + k]! += g * row[k]!;
    }
  }
  out.set(acc);
}

/**
 * out[n, :] = W[ids[n], :] decoded: the embedding lookup in a packed table W [V, D].
 * Every id must lie in [0, V): gatherWeightOnHost checks them (RangeError) before calling this.
 */
export function gatherWeightRef(w: HostWeight, _V: number, D: number, ids: Int32Array, out: Float32Array): void {
  for (let n = 0; n < ids.length; n++) decodeRow(w, D, ids[n]!, out.subarray(n * D, (n + 1) * D));
}

/**
 * The size check of matmulWeight with a packed W [N, K]: x [M, K] for "nt" (out [M, N]),
 * x [M, N] for "nn" (out [M, K]).
 * @returns the element count of out
 */
export function checkMatmulWeight(x: Sized, w: WeightStorage, M: number, form: "nt" | "nn"): number {
  const [inner, outer] = form === "nt" ? [w.cols, w.rows] : [w.rows, w.cols];
  need("matmulWeight", "x", x, M * inner);
  return M * outer;
}

/**
 * matmulWeight on a host-memory device: the weight in its stored form, x f32, the size check, the
 * output, then `compute` (matmulWeightRef's arguments; the reference on cpu, the wasm device's
 * kernels in wasm/weights.wasm.ts).
 */
export function matmulWeightOnHost<D extends CpuBackend>(
  compute: (device: D, x: Float32Array, w: HostWeight, N: number, K: number, M: number, form: "nt" | "nn", out: Float32Array) => void,
): KernelOf<typeof matmulWeightOp, D> {
  return (device, x, w, M, form) => {
    const s = weightData("matmulWeight", w);
    expectDType("matmulWeight", "x", x, "f32");
    const out = device.allocate("f32", checkMatmulWeight(x, s, M, form)) as Float32Array;
    compute(device, hostData("matmulWeight", x) as Float32Array, s.data, s.rows, s.cols, M, form, out);
    return device.wrap(out);
  };
}

/**
 * gatherWeight on a host-memory device: ids i32, each checked (outside [0, V): RangeError,
 * before the output is allocated), out [n, D] f32, then `compute` (gatherWeightRef's arguments).
 */
export function gatherWeightOnHost<D extends CpuBackend>(
  compute: (device: D, w: HostWeight, V: number, D: number, ids: Int32Array, out: Float32Array) => void,
): KernelOf<typeof gatherWeightOp, D> {
  return (device, w, ids) => {
    const s = weightData("gatherWeight", w);
    expectDType("gatherWeight", "ids", ids, "i32");
    const hids = hostData("gatherWeight", ids) as Int32Array;
    checkIds("gather", hids, s.rows);
    const out = device.allocate("f32", ids.numel * s.cols) as Float32Array;
    compute(device, s.data, s.rows, s.cols, hids, out);
    return device.wrap(out);
  };
}

// The cpu kernels: the weight stays in its stored form.
registerKernel(matmulWeightOp, "cpu", matmulWeightOnHost((_cpu, ...args) => matmulWeightRef(...args)));
registerKernel(gatherWeightOp, "cpu", gatherWeightOnHost((_cpu, ...args) => gatherWeightRef(...args)));
