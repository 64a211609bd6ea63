import type { HostArray } from "../tensor/dtype.ts";
import type { MatmulGeometry } from "../tensor/ops/matmul.ts";
import { matmulOp } from "../tensor/ops/matmul.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import type { CpuBackend } from "./cpu.ts";
import { floatArgs } from "./host.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * The batched matrix product, the one kernel behind Linear layers, attention's projections and
 * every matmul backward (which the tensor layer writes with transA / transB instead of copies:
 * dA = dOut @ B^T, dB = A^T @ dOut).
 */

/**
 * out[b, i, j] = sum_k opA(A[b])[i, k] * opB(B[b])[k, j], the naive triple loop (llm.c's
 * `matmul_forward_cpu` is the same loop), accumulated in doubles.
 *
 * A[b] starts at element b * batchStrideA and is stored [M, K], or [K, M] when transA;
 * B[b] starts at b * batchStrideB and is stored [K, N], or [N, K] when transB (a PyTorch Linear
 * weight). A batch stride of 0 reuses one matrix for every batch (broadcast).
 * @param a, b float arrays of one dtype
 * @param out [batch, M, N], contiguous, same dtype
 */
export function matmulRef(a: HostArray, b: HostArray, out: HostArray, g: MatmulGeometry): void {
  const { batch, M, N, K } = g;
  // Strides of opA(A[bi]) over (i, k) and of opB(B[bi]) over (k, j), in elements.
  const [aI, aK] = g.transA ? [1, M] : [K, 1];
  const [bK, bJ] = g.transB ? [1, K] : [N, 1];
  for (let bi = 0; bi < batch; bi++) {
    for (let i = 0; i < M; i++) {
      const aRow = bi * g.batchStrideA + i * aI;
      for (let j = 0; j < N; j++) {
        const bCol = bi * g.batchStrideB + j * bJ;
        let acc = 0;
        for (let k = 0; k < K; k++) acc += a[aRow + k * aK]! * b[bCol + k * bK]!;
        out[(bi * M + i) * N + j] = acc;
      }
    }
  }
}

/** Number of elements a matmul operand must hold: the last batch's matrix must fit. */
function matmulOperandNumel(batch: number, batchStride: number, rows: number, cols: number): number {
  return batch === 0 ? 0 : (batch - 1) * batchStride + rows * cols;
}

/**
 * The size check of the batched matmul: the last batch's matrix of each operand must fit (see
 * MatmulGeometry).
 * @returns the element count of out [batch, M, N]
 */
export function checkMatmul(a: Sized, b: Sized, g: MatmulGeometry): number {
  need("matmul", "a", a, matmulOperandNumel(g.batch, g.batchStrideA, g.M, g.K));
  need("matmul", "b", b, matmulOperandNumel(g.batch, g.batchStrideB, g.K, g.N));
  return g.batch * g.M * g.N;
}

/**
 * matmul on a host-memory device: a and b of one float dtype, the size check, the output, then
 * `compute` (the reference on cpu; the SIMD kernels on wasm, wasm/matmul.wasm.ts).
 */
export function matmulOnHost<D extends CpuBackend>(
  compute: (device: D, a: HostArray, b: HostArray, out: HostArray, g: MatmulGeometry) => void,
): KernelOf<typeof matmulOp, D> {
  return (device, a, b, g) => {
    const [ha, hb] = floatArgs("matmul", [a, b]);
    const out = device.allocate(a.dtype, checkMatmul(a, b, g));
    compute(device, ha!, hb!, out, g);
    return device.wrap(out);
  };
}

registerKernel(matmulOp, "cpu", matmulOnHost((_cpu, ...args) => matmulRef(...args)));
