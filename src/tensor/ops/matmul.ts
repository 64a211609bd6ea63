import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { DTypeError, ShapeError, fmt } from "../errors.ts";
import { isFloat } from "../dtype.ts";
import { broadcastShapes, numel } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { broadcastView, sumTo } from "./views.ts";

/** Geometry of a batched matrix product `out[b] = opA(A[b]) @ opB(B[b])`. */
export interface MatmulGeometry {
  /** Batch count of the output. */
  batch: number;
  /** Rows of opA(A) and of the output. */
  M: number;
  /** Columns of opB(B) and of the output. */
  N: number;
  /** Inner dimension. */
  K: number;
  /** When true, A is stored [K, M] per batch and read transposed. */
  transA: boolean;
  /** When true, B is stored [N, K] per batch (a PyTorch Linear weight) and read transposed. */
  transB: boolean;
  /** Elements between consecutive batches of A, or 0 to reuse one matrix for every batch. */
  batchStrideA: number;
  /** Elements between consecutive batches of B, or 0 to reuse one matrix for every batch. */
  batchStrideB: number;
}

/**
 * Batched matrix product, see MatmulGeometry: a and b contiguous per matrix, out [batch, M, N].
 * Kernels: src/kernels/matmul.ts, matmul.wgsl.ts, wasm/matmul.wasm.ts.
 */
export const matmulOp = deviceOp<[a: Storage, b: Storage, g: MatmulGeometry], Storage>("matmul");

/**
 * How one operand of a matmul is handed to the kernel: the bare storage, whether it is read
 * transposed, the stride between batches (0: one matrix for all) and a temporary copy to free.
 */
interface Operand {
  storage: Storage;
  trans: boolean;
  batchStride: number;
  temp: Tensor | null;
}

/** Whether `t` ([..., R, C]) lies in its storage from element 0 as dense matrices of the given per-matrix strides. */
function denseWith(t: Tensor, rowStride: number, colStride: number): boolean {
  const r = t.rank;
  const R = t.shape[r - 2]!;
  const C = t.shape[r - 1]!;
  if (t.offset !== 0) return false;
  if (R > 1 && t.strides[r - 2] !== rowStride) return false;
  if (C > 1 && t.strides[r - 1] !== colStride) return false;
  let expect = R * C;
  for (let i = r - 3; i >= 0; i--) {
    if (t.shape[i]! > 1 && t.strides[i] !== expect) return false;
    expect *= t.shape[i]!;
  }
  return true;
}

/**
 * Prepares `t` ([...batch, R, C]) broadcast to `batchShape`: no copy when it is row-major, or
 * the transpose of a row-major tensor (then `trans`), and shared by every batch (stride 0) or
 * dense over them; otherwise one contiguous copy.
 */
function operand(t: Tensor, batchShape: readonly number[]): Operand {
  const R = t.shape[t.rank - 2]!;
  const C = t.shape[t.rank - 1]!;
  const shared = numel(t.shape.slice(0, -2)) === 1;
  const full = shared ? t : broadcastView(t, [...batchShape, R, C]);
  const batchStride = shared ? 0 : R * C;
  if (denseWith(full, C, 1)) return { storage: t.storage, trans: false, batchStride, temp: full === t ? null : full };
  if (denseWith(full, 1, R)) return { storage: t.storage, trans: true, batchStride, temp: full === t ? null : full };
  const copy = full.contiguous(true);
  if (full !== t) full.dispose();
  return { storage: copy.storage, trans: false, batchStride, temp: copy };
}

/**
 * Batched matrix product with NumPy batch broadcasting: a [...Ba, M, K] @ b [...Bb, K, N] ->
 * [...broadcast(Ba, Bb), M, N]. Transposed views (`w.transpose()`) are read in place by the
 * kernel (transA/transB), so `x.matmul(w.transpose())` with a PyTorch Linear weight w [N, K]
 * copies nothing. A 2-D b is applied to all rows of a at once ([B*M, K] @ [K, N]).
 *
 * Gradients: dA = g B^T, dB = A^T g, each summed over broadcast batch axes.
 * @throws ShapeError when a rank is below 2 or inner sizes differ; DTypeError on non-float or
 *   mixed dtypes; DeviceError when a and b are on different devices.
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  a.assertAlive("matmul");
  b.assertAlive("matmul");
  assertSameDevice("matmul", a, b);
  if (a.rank < 2 || b.rank < 2) throw new ShapeError("matmul", `needs rank >= 2, got ${fmt(a.shape)} x ${fmt(b.shape)}`);
  if (a.dtype !== b.dtype || !isFloat(a.dtype)) throw new DTypeError("matmul", `needs equal float dtypes, got ${a.dtype} x ${b.dtype}`);
  const M = a.shape[a.rank - 2]!;
  const K = a.shape[a.rank - 1]!;
  const N = b.shape[b.rank - 1]!;
  if (b.shape[b.rank - 2] !== K) {
    throw new ShapeError("matmul", `${fmt(a.shape)} x ${fmt(b.shape)}: inner sizes ${K} != ${b.shape[b.rank - 2]}`);
  }
  if (b.rank === 2 && a.rank > 2) {
    // Fold a's batch into rows: one [B*M, K] x [K, N] product instead of B small ones.
    const a2 = a.reshape([-1, K]);
    return a2.matmul(b).reshape([...a.shape.slice(0, -1), N]);
  }
  const batchShape = broadcastShapes("matmul", a.shape.slice(0, -2), b.shape.slice(0, -2));
  const batch = numel(batchShape);
  const A = operand(a, batchShape);
  const B = operand(b, batchShape);
  const out = a.backend.run(matmulOp, A.storage, B.storage, {
    batch,
    M,
    N,
    K,
    transA: A.trans,
    transB: B.trans,
    batchStrideA: A.batchStride,
    batchStrideB: B.batchStride,
  });
  A.temp?.dispose();
  B.temp?.dispose();
  const y = Tensor.fromStorage(a.backend, out, [...batchShape, M, N]);
  // Only the gradients that are needed: with frozen weights (LoRA), dB is never computed.
  return record(y, "matmul", [a, b], (g) => [
    a.requiresGrad ? sumTo(matmul(g, b.transpose()), a.shape) : null,
    b.requiresGrad ? sumTo(matmul(a.transpose(), g), b.shape) : null,
  ]);
}
