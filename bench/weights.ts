/**
 * Packed weights (bf16, f16, NF4; src/tensor/weight.ts) against f32 in the same run, on the
 * webgpu device: the Linear product x W^T at a Qwen1.5-1.8B MLP shape (GFLOP/s) and the decoding
 * matrix-vector product against the 151,936 x 2,048 lm_head (GB/s of weight bytes read and
 * weights/s), with each dtype's device bytes per parameter. The targets (targets.ts) compare
 * weights/s of the decode row: bf16 >= 1.7x and nf4 >= 3x f32, and no dtype > 10% slower.
 */
import { PackedWeight, weightBytes, type PackedDType, type WeightDType } from "../src/tensor/weight.ts";
import { f32ToBf16, f32ToF16 } from "../src/tensor/half.ts";
import { quantizeNf4 } from "../src/tensor/nf4.ts";
import type { Storage } from "../src/tensor/backend.ts";
import { matmulOp } from "../src/tensor/ops/matmul.ts";
import { matmulWeightOp } from "../src/tensor/ops/weights.ts";
import type { CaseResult, Contender } from "./harness.ts";
import { attempt, gpuTimer, measure } from "./harness.ts";
import type { BenchContext } from "./kernels.ts";
import { hostRandom } from "./peer.ts";

/** The dtypes compared, f32 first (the reference of the ratios). */
export const WEIGHT_CASE_DTYPES: readonly WeightDType[] = ["f32", "bf16", "nf4"];

/** One [N, K] weight of `dtype` on the gpu, and its product with x [M, K] as a recorder. */
function contender(ctx: BenchContext, dtype: WeightDType, values: Float32Array, x: Storage, M: number, N: number, K: number): { c: Contender; dispose(): void } {
  const gpu = ctx.gpu!;
  const outs: Storage[] = [];
  const flush = () => outs.splice(0).forEach((s) => gpu.free(s));
  let record: () => void;
  let dispose: () => void;
  if (dtype === "f32") {
    const w = gpu.upload(values);
    record = () => void outs.push(gpu.run(matmulOp, x, w, { batch: 1, M, N, K, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 }));
    dispose = () => gpu.free(w);
  } else {
    const d = dtype as PackedDType;
    const host = d === "nf4" ? { dtype: d, ...quantizeNf4(values) } : { dtype: d, bits: d === "bf16" ? f32ToBf16(values) : f32ToF16(values) };
    const w = PackedWeight.upload(gpu, host, N, K);
    record = () => void outs.push(gpu.run(matmulWeightOp, x, w.storage, M, "nt"));
    dispose = () => w.dispose();
  }
  const bytes = weightBytes(dtype, N * K);
  return {
    c: {
      engine: "qalign webgpu",
      variant: dtype,
      time: async (n) => {
        const t = await gpuTimer(gpu, n, () => {
          record();
          flush();
        });
        return t;
      },
      extra: () => ({ bytesPerParameter: bytes / (N * K), weightBytes: bytes }),
    },
    dispose: () => {
      flush();
      dispose();
    },
  };
}

/** One case: out = x [M, K] @ W^T for W [N, K] at every dtype. */
async function weightCase(ctx: BenchContext, name: string, M: number, N: number, K: number): Promise<CaseResult> {
  const gpu = ctx.gpu!;
  const values = hostRandom(N * K, 7).map((u) => 0.02 * u);
  const x = gpu.upload(hostRandom(M * K, 8));
  const made = WEIGHT_CASE_DTYPES.map((d) => contender(ctx, d, values, x, M, N, K));
  try {
    const results = await measure(
      made.map((m) => m.c),
      { flops: 2 * M * N * K },
      ctx.opts,
    );
    for (const [i, t] of results.entries()) {
      const extra = made[i]!.c.extra!();
      const ms = t.medianMs;
      t.extra = { ...extra, ...(ms ? { weightGBps: (extra["weightBytes"] as number) / ms / 1e6, weightsPerSecond: (N * K) / (ms / 1e3) } : {}) };
    }
    return { group: "weights", name, params: { M, N, K }, work: { flops: 2 * M * N * K }, results };
  } finally {
    made.forEach((m) => m.dispose());
    gpu.free(x);
  }
}

/** The packed-weight cases; none without a webgpu device (the cpu devices run the plain reference). */
export async function weightCases(ctx: BenchContext): Promise<CaseResult[]> {
  if (!ctx.gpu) {
    ctx.log("weights: no webgpu device, no cases");
    return [];
  }
  const rows = ctx.quick ? 16_384 : 151_936;
  const T = ctx.quick ? 16 : 128;
  return [
    await attempt("weights", `x W^T [${T}, 2048] x [5504, 2048] (Qwen1.5-1.8B up_proj)`, () => weightCase(ctx, `x W^T [${T}, 2048] x [5504, 2048] (Qwen1.5-1.8B up_proj)`, T, 5504, 2048)),
    await attempt("weights", `decode row [1, 2048] x [${rows}, 2048] (Qwen1.5-1.8B lm_head)`, () => weightCase(ctx, `decode row [1, 2048] x [${rows}, 2048] (Qwen1.5-1.8B lm_head)`, 1, rows, 2048)),
  ];
}
