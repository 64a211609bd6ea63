import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import type { Backend } from "../src/tensor/backend.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "../src/tensor/half.ts";
import { dequantizeNf4, quantizeNf4 } from "../src/tensor/nf4.ts";
import { embedding } from "../src/tensor/ops/embedding.ts";
import { linear } from "../src/tensor/ops/weights.ts";
import { PackedWeight, type HostWeight, type PackedDType } from "../src/tensor/weight.ts";
import { expectClose } from "./helpers/close.ts";
import { describeWebGpu, testDevices } from "./helpers/devices.ts";
import { random } from "./helpers/random.ts";

/**
 * The kernels that read packed weights (bf16, f16, NF4) on both devices, against float64
 * products of the weight's exact f32 values, decoded by the conversions tested on their own
 * (half.ts in model_checkpoint.test.ts, NF4 against PyTorch in nf4.test.ts). Tolerance: the
 * kernels sum K <= 200 f32 products of values below 1 (weights) and 1 (inputs); f32 rounding
 * then errs by at most about K 2^-24 |sum of |terms|| < 2e-5 times the scale; 1e-5 (1 + |ref|)
 * relative holds with margin at these sizes and fails for any decoding error (a swapped nibble
 * or half moves a value by a code gap, >= 0.08 of absmax). Gathers copy decoded values: exact.
 */

const cpu = qa.cpuDevice();

/** A random [rows, cols] weight in `dtype` and its exact f32 values. */
function makeWeight(dtype: PackedDType, rows: number, cols: number, seed: number): { host: HostWeight; values: Float32Array } {
  const r = random(seed);
  const a = Float32Array.from({ length: rows * cols }, () => r() * 0.5);
  if (dtype === "nf4") {
    const q = quantizeNf4(a);
    return { host: { dtype, ...q }, values: dequantizeNf4(q, a.length) };
  }
  const bits = dtype === "bf16" ? f32ToBf16(a) : f32ToF16(a);
  return { host: { dtype, bits }, values: dtype === "bf16" ? bf16ToF32(bits) : f16ToF32(bits) };
}

/** out [M, N] = x [M, K] @ W^T (nt) or x [M, N] @ W (nn), in float64. */
function refMatmul(x: Float32Array, w: Float32Array, N: number, K: number, M: number, form: "nt" | "nn"): Float64Array {
  const out = new Float64Array(M * (form === "nt" ? N : K));
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        if (form === "nt") out[m * N + n]! += x[m * K + k]! * w[n * K + k]!;
        else out[m * K + k]! += x[m * N + n]! * w[n * K + k]!;
      }
    }
  }
  return out;
}

/** [N, K, M] cases: tile edges in every direction, decode (M = 1), K a multiple of 8 but not of 64. */
const SHAPES: [number, number, number][] = [
  [5, 8, 1],
  [37, 72, 1],
  [37, 72, 3],
  [64, 200, 9],
  [9, 64, 33],
];

async function checkDevice(be: Backend): Promise<void> {
  for (const dtype of ["bf16", "f16", "nf4"] as const) {
    for (const [i, [N, K, M]] of SHAPES.entries()) {
      const { host, values } = makeWeight(dtype, N, K, 10 + i);
      const w = PackedWeight.upload(be, host, N, K);
      const r = random(100 + i);
      const xv = Float32Array.from({ length: M * K }, r);
      const x = qa.tensor(xv, { device: be, shape: [M, K] }).requireGrad();
      const y = linear(x, w);
      expect(y.shape).toEqual([M, N]);
      expectClose(await y.data(), refMatmul(xv, values, N, K, M, "nt"), 1e-5);
      // Backward: dx = g W, through the "nn" kernel.
      const gv = Float32Array.from({ length: M * N }, r);
      y.mul(qa.tensor(gv, { device: be, shape: [M, N] })).sum().backward();
      expectClose(await x.grad!.data(), refMatmul(gv, values, N, K, M, "nn"), 1e-5);
      // The stored form reads back as the exact values.
      expect(Array.from(await w.data())).toEqual(Array.from(values));
      // Embedding gather: rows copied exactly.
      const ids = Int32Array.from({ length: 7 }, (_, j) => (j * 5 + i) % N);
      const e = await embedding(w, qa.tensor(ids, { device: be, shape: [7] })).data();
      const want = new Float32Array(7 * K);
      ids.forEach((id, j) => want.set(values.subarray(id * K, (id + 1) * K), j * K));
      expect(Array.from(e)).toEqual(Array.from(want));
      w.dispose();
      x.dispose();
      y.dispose();
    }
  }
}

describe("packed weights (bf16, f16, nf4)", () => {
  test("cpu: x W^T, g W and gather equal the float64 products of the exact values", () => checkDevice(cpu));
  testDevices("x W^T (webgpu: tiled and matrix-vector kernels), g W and gather equal the float64 products", (device) => checkDevice(device), 120_000);

  // A GPU's arrangement of the decoding kernel: 256 lanes split K, then a tree reduction.
  describeWebGpu("with GPU-sized row workgroups", { rowWorkgroup: 256 }, (testOn) => {
    testOn("webgpu: the decoding kernel with 256 lanes per block equals the float64 products", (gpu) => checkDevice(gpu));
  });

  test("device bytes: 2 per weight for 16-bit, 0.5625 for NF4, freed on dispose", () => {
    const before = cpu.liveBytes();
    const b = PackedWeight.upload(cpu, makeWeight("bf16", 64, 128, 1).host, 64, 128);
    expect(cpu.liveBytes() - before).toBe(64 * 128 * 2);
    const n = PackedWeight.upload(cpu, makeWeight("nf4", 64, 128, 2).host, 64, 128);
    expect(cpu.liveBytes() - before).toBe(64 * 128 * 2 + 64 * 128 * 0.5625);
    b.dispose();
    n.dispose();
    expect(cpu.liveBytes()).toBe(before);
  });

  test("bad weights are refused before any compute: columns not a multiple of 8, wrong sizes, wrong input", () => {
    expect(() => PackedWeight.upload(cpu, { dtype: "bf16", bits: new Uint16Array(12) }, 3, 4)).toThrow(/multiple of 8 columns/);
    expect(() => PackedWeight.upload(cpu, { dtype: "bf16", bits: new Uint16Array(12) }, 2, 8)).toThrow(/does not hold a \[2,8\] weight/);
    const w = PackedWeight.upload(cpu, makeWeight("nf4", 4, 8, 3).host, 4, 8);
    expect(() => linear(qa.zeros([2, 16], { device: cpu }), w)).toThrow(qa.ShapeError);
    expect(() => linear(qa.zeros([2, 8], { device: cpu, dtype: "f64" }), w)).toThrow(qa.DTypeError);
    w.dispose();
    expect(() => linear(qa.zeros([2, 8], { device: cpu }), w)).toThrow(qa.DisposedError);
  });
});
