import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { DTypeError, ShapeError, fmt } from "../errors.ts";
import { Tensor } from "../tensor.ts";
import type { WeightStorage } from "../weight.ts";
import { PackedWeight } from "../weight.ts";
import { release, rowsOf } from "./operands.ts";

/**
 * The ops that take a weight operand, a Tensor or a packed one (src/tensor/weight.ts): `linear`,
 * and the packed table lookup that `embedding` (embedding.ts) hands over. The device ops that
 * read a packed weight in its stored form (`gatherWeightOp`, `matmulWeightOp`) are declared
 * here; their kernels are in src/kernels (weights.ts, weights.wgsl.ts).
 */

/**
 * out [n, D] = W[ids[i], :] for a packed table W [V, D] (bf16, f16, NF4) and i32 ids [n], f32;
 * out-of-range ids as gather. Kernels: src/kernels/weights.ts, weights.wgsl.ts.
 */
export const gatherWeightOp = deviceOp<[w: WeightStorage, ids: Storage], Storage>("gatherWeight");

/**
 * The product with a packed weight W [N, K] (N = w.rows, K = w.cols), dequantized in
 * registers, summed in f32: "nt" out [M, N] = x [M, K] @ W^T (a Linear's forward, and
 * decoding's matrix-vector product when M = 1); "nn" out [M, K] = x [M, N] @ W (its input
 * gradient). x contiguous f32. Kernels: src/kernels/weights.ts, weights.wgsl.ts.
 */
export const matmulWeightOp = deviceOp<[x: Storage, w: WeightStorage, M: number, form: "nt" | "nn"], Storage>("matmulWeight");

/** A weight operand: a Tensor (f32, or f64 on cpu) or a frozen PackedWeight (bf16, f16, NF4). */
export type WeightLike = Tensor | PackedWeight;

/** Checks a PackedWeight operand of `op` and the f32 tensor it meets. */
function assertPacked(op: string, w: PackedWeight, x: Tensor): void {
  w.assertAlive(op);
  x.assertAlive(op);
  assertSameDevice(op, x, w);
  if (x.dtype !== (op === "embedding" ? "i32" : "f32")) {
    throw new DTypeError(op, `a ${w.dtype} weight needs ${op === "embedding" ? "i32 ids" : "an f32 input"}, got ${x.dtype}`);
  }
}

/** The embedding lookup in a packed table [V, D]: ids [...] -> [..., D] f32. The table is frozen: no gradient. */
export function packedEmbedding(table: PackedWeight, ids: Tensor): Tensor {
  assertPacked("embedding", table, ids);
  const idd = ids.isDense() ? ids : ids.contiguous(true);
  const be = table.backend;
  const y = Tensor.fromStorage(be, be.run(gatherWeightOp, table.storage, idd.storage), [...ids.shape, table.shape[1]]);
  release(idd, ids);
  return y;
}

/**
 * y [..., N] = x [..., K] W^T for a packed W [N, K], read in its stored form (QLoRA's frozen base,
 * Dettmers et al. 2023 section 3: the weight is dequantized inside the kernel, the product is f32).
 * Gradient: dx = g W (the "nn" kernel); W itself is frozen and gets none.
 */
function packedLinear(x: Tensor, w: PackedWeight): Tensor {
  assertPacked("linear", w, x);
  const [N, K] = w.shape;
  if (x.shape[x.rank - 1] !== K) throw new ShapeError("linear", `x ${fmt(x.shape)} does not match a weight ${fmt(w.shape)} (last axis must be ${K})`);
  const { dense, rows } = rowsOf(x);
  const be = x.backend;
  const y = Tensor.fromStorage(be, be.run(matmulWeightOp, dense.storage, w.storage, rows, "nt"), [...x.shape.slice(0, -1), N]);
  release(dense, x);
  return record(y, "linear", [x], (g) => {
    const gd = g.isDense() ? g : g.contiguous(true);
    const dx = Tensor.fromStorage(be, be.run(matmulWeightOp, gd.storage, w.storage, rows, "nn"), x.shape);
    release(gd, g);
    return [dx];
  });
}

/**
 * Linear layer as in PyTorch nn.Linear: y = x W^T + b; x [..., in], weight [out, in],
 * bias [out]. A Tensor weight's transpose is read in place (no copy); a PackedWeight is read in
 * its stored form (packedLinear).
 * @throws DeviceError when x, weight and bias are not on one device; ShapeError / DTypeError for
 *   a packed weight that does not fit x.
 */
export function linear(x: Tensor, weight: WeightLike, bias?: Tensor | null): Tensor {
  assertSameDevice("linear", x, weight, bias);
  const y = weight instanceof PackedWeight ? packedLinear(x, weight) : x.matmul(weight.transpose());
  if (!bias) return y;
  const out = y.add(bias);
  return out;
}
