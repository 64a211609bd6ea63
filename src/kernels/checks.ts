import type {
  AttentionBackwardInputs,
  AttentionGeometry,
  AttentionInputs,
  CrossEntropyGeometry,
  EmbeddingGeometry,
  MatmulGeometry,
  RmsNormGeometry,
  RopeGeometry,
  View,
} from "../tensor/backend.ts";
import { ShapeError, fmt } from "../tensor/errors.ts";
import type { WeightStorage } from "../tensor/weight.ts";
import { numel } from "../tensor/shape.ts";
import { matmulOperandNumel } from "./matmul.ts";

/**
 * Argument checks that every backend makes the same way, so the cpu reference, the webgpu device
 * and any other device reject the same calls with the same messages. Backends import the module
 * as `checks`; each function named after an op (`checks.rope`) takes the op's storages (anything with a `numel`) and its geometry, throws a ShapeError naming
 * the op, the operand and both sizes when a storage is too small, and returns the element counts
 * of the outputs the geometry implies. Dtype checks stay with each backend (which dtypes a device
 * holds differs).
 */

/** Anything with an element count: a backend's Storage, a host array's length wrapped, a GPU storage. */
export interface Sized {
  readonly numel: number;
}

/**
 * @throws ShapeError naming `op` and `what` when `s` holds fewer than `n` elements (a storage may
 *   be larger than its use: pooled buffers and views of a bigger tensor).
 */
export function need(op: string, what: string, s: Sized, n: number): void {
  if (s.numel < n) throw new ShapeError(op, `${what} has ${s.numel} elements, needs ${n}`);
}

/**
 * Checks that every element a strided view addresses lies inside its storage: the lowest and
 * highest reachable positions take each axis at 0 or at its end (negative strides allowed).
 * @param storageNumel elements of the view's storage
 * @throws ShapeError naming the op, the view and the storage size
 */
export function assertViewInBounds(op: string, v: View, storageNumel: number): void {
  if (numel(v.shape) === 0) return;
  let lo = v.offset;
  let hi = v.offset;
  v.shape.forEach((size, axis) => {
    const span = (size - 1) * v.strides[axis]!;
    lo += Math.min(0, span);
    hi += Math.max(0, span);
  });
  if (lo < 0 || hi >= storageNumel) {
    throw new ShapeError(op, `view ${fmt(v.shape)} with strides ${fmt(v.strides)} at offset ${v.offset} reaches outside its storage of ${storageNumel} elements`);
  }
}

/**
 * Row ops (reduce, softmax) over contiguous x [rows, cols].
 * @returns the element count of a [rows, cols] output
 * @throws ShapeError when x holds fewer than rows * cols elements
 */
export function rowOp(op: string, x: Sized, rows: number, cols: number): number {
  need(op, "x", x, rows * cols);
  return rows * cols;
}

/**
 * Batched matmul: the last batch's matrix of each operand must fit (see MatmulGeometry).
 * @returns the element count of out [batch, M, N]
 */
export function matmul(op: string, a: Sized, b: Sized, g: MatmulGeometry): number {
  need(op, "a", a, matmulOperandNumel(g.batch, g.batchStrideA, g.M, g.K));
  need(op, "b", b, matmulOperandNumel(g.batch, g.batchStrideB, g.K, g.N));
  return g.batch * g.M * g.N;
}

/**
 * Cross-entropy forward (gradLoss null) or backward: logits [rows, cols], targets [rows],
 * gradLoss [rows].
 * @returns the element count of the backward's output [rows, cols]
 */
export function crossEntropy(op: string, logits: Sized, targets: Sized, gradLoss: Sized | null, g: CrossEntropyGeometry): number {
  need(op, "logits", logits, g.rows * g.cols);
  need(op, "targets", targets, g.rows);
  if (gradLoss) need(op, "gradLoss", gradLoss, g.rows);
  return g.rows * g.cols;
}

/**
 * gather: table [V, D], ids [N].
 * @returns the element count of out [N, D]
 */
export function gather(op: string, table: Sized, ids: Sized, g: EmbeddingGeometry): number {
  need(op, "table", table, g.V * g.D);
  return ids.numel * g.D;
}

/**
 * matmulWeight with a packed W [N, K]: x [M, K] for "nt" (out [M, N]), x [M, N] for "nn" (out [M, K]).
 * @returns the element count of out
 */
export function matmulWeight(op: string, x: Sized, w: WeightStorage, M: number, form: "nt" | "nn"): number {
  const [inner, outer] = form === "nt" ? [w.cols, w.rows] : [w.rows, w.cols];
  need(op, "x", x, M * inner);
  return M * outer;
}

/**
 * scatterAdd: grad [N, D], ids [N].
 * @returns the element count of out [V, D]
 */
export function scatterAdd(op: string, grad: Sized, ids: Sized, g: EmbeddingGeometry): number {
  need(op, "grad", grad, ids.numel * g.D);
  return g.V * g.D;
}

/**
 * RMSNorm: x [rows, D], weight [D].
 * @returns the element count of out [rows, D]
 */
export function rmsNorm(op: string, x: Sized, weight: Sized, g: RmsNormGeometry): number {
  need(op, "x", x, g.rows * g.D);
  need(op, "weight", weight, g.D);
  return g.rows * g.D;
}

/**
 * The rotary geometry alone: rotate_half pairs dimension d with d + Dh/2, so Dh must be even,
 * and the angle tables hold one batch row or B.
 * @throws ShapeError when Dh is odd or Bc is neither 1 nor B
 */
export function ropeGeometry(op: string, g: RopeGeometry): void {
  if (g.Dh % 2 !== 0) throw new ShapeError(op, `head dim ${g.Dh} is odd`);
  if (g.Bc !== 1 && g.Bc !== g.B) throw new ShapeError(op, `cos/sin batch ${g.Bc} is neither 1 nor B = ${g.B}`);
}

/**
 * Rotary embedding: x [B, H, T, Dh], cos and sin [Bc, T, Dh/2].
 * @returns the element count of out [B, H, T, Dh]
 * @throws ShapeError as ropeGeometry, or for a storage too small
 */
export function rope(op: string, x: Sized, cos: Sized, sin: Sized, g: RopeGeometry): number {
  ropeGeometry(op, g);
  const n = g.B * g.H * g.T * g.Dh;
  need(op, "x", x, n);
  need(op, "cos", cos, (g.Bc * g.T * g.Dh) / 2);
  need(op, "sin", sin, (g.Bc * g.T * g.Dh) / 2);
  return n;
}

/** Element counts of attention's operands: q and out [B, H, Tq, Dh], k and v [B, Hkv, Tk, Dh], lse [B, H, Tq], keyMask [B, Tk]. */
export interface AttentionSizes {
  q: number;
  kv: number;
  lse: number;
  keyMask: number;
}

/**
 * The attention geometry alone, and the operand sizes it implies.
 * @throws ShapeError when H is not a multiple of Hkv (grouped-query attention shares each kv
 *   head among H / Hkv query heads)
 */
export function attentionSizes(op: string, g: AttentionGeometry): AttentionSizes {
  if (g.Hkv <= 0 || g.H % g.Hkv !== 0) throw new ShapeError(op, `query heads H = ${g.H} are not a multiple of kv heads Hkv = ${g.Hkv}`);
  return { q: g.B * g.H * g.Tq * g.Dh, kv: g.B * g.Hkv * g.Tk * g.Dh, lse: g.B * g.H * g.Tq, keyMask: g.B * g.Tk };
}

/**
 * Attention forward: q, k, v and the optional key mask.
 * @returns the operand sizes (out is q's size, lse [B, H, Tq])
 * @throws ShapeError as attentionSizes, or for a storage too small
 */
export function attention(op: string, ins: AttentionInputs<Sized>, g: AttentionGeometry): AttentionSizes {
  const n = attentionSizes(op, g);
  need(op, "q", ins.q, n.q);
  need(op, "k", ins.k, n.kv);
  need(op, "v", ins.v, n.kv);
  if (ins.keyMask) need(op, "keyMask", ins.keyMask, n.keyMask);
  return n;
}

/**
 * Attention backward: the forward's operands plus out, dOut and lse.
 * @returns the operand sizes (dq is q's size, dk and dv kv's)
 */
export function attentionBackward(op: string, ins: AttentionBackwardInputs<Sized>, g: AttentionGeometry): AttentionSizes {
  const n = attention(op, ins, g);
  need(op, "out", ins.out, n.q);
  need(op, "dOut", ins.dOut, n.q);
  need(op, "lse", ins.lse, n.lse);
  return n;
}

/** AdamW: grad, m and v as large as param. */
export function adamw(op: string, param: Sized, others: { grad: Sized; m: Sized; v: Sized }): void {
  for (const [what, s] of Object.entries(others)) need(op, what, s, param.numel);
}
