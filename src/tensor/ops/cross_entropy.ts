import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { DTypeError, ShapeError, fmt } from "../errors.ts";
import { Tensor } from "../tensor.ts";
import { assertFloat, release, rowsOf } from "./operands.ts";

/**
 * Cross-entropy of logits against class indices, fused: no softmax tensor is kept. The device
 * ops (`crossEntropyOp`, `crossEntropyBackwardOp`) and their geometry are declared here; their
 * kernels are in src/kernels (cross_entropy.ts, cross_entropy.wgsl.ts, wasm/rows.wasm.ts).
 */

/** Geometry of a per-row cross-entropy over contiguous logits [rows, cols] (cols = V, the classes). */
export interface CrossEntropyGeometry {
  rows: number;
  cols: number;
  /** Target value that marks a row as ignored (loss 0, gradient 0): -100 in Hugging Face labels. */
  ignoreIndex: number;
}

/**
 * Per-row cross-entropy of logits [rows, cols] against i32 targets [rows]:
 * loss [rows] = logsumexp(logits[r]) - logits[r, target[r]], 0 where target == ignoreIndex.
 * Kernels: src/kernels/cross_entropy.ts, cross_entropy.wgsl.ts, wasm/rows.wasm.ts.
 */
export const crossEntropyOp = deviceOp<[logits: Storage, targets: Storage, g: CrossEntropyGeometry], Storage>("crossEntropy");

/**
 * Its gradient [rows, cols]: (softmax(logits[r]) - onehot(target[r])) * gradLoss[r], zero rows
 * where ignored.
 */
export const crossEntropyBackwardOp = deviceOp<[logits: Storage, targets: Storage, gradLoss: Storage, g: CrossEntropyGeometry], Storage>("crossEntropyBackward");

export interface CrossEntropyOptions {
  /** Targets equal to this contribute no loss and no gradient (PyTorch's default -100). */
  ignoreIndex?: number;
  /** Per-target weights [...] (e.g. a 0/1 loss mask), multiplied into each row's loss. */
  mask?: Tensor;
  /** "mean" over counted targets (sum of mask, or of non-ignored targets), "sum", or "none" ([...]). */
  reduction?: "mean" | "sum" | "none";
}

/**
 * Cross-entropy of logits [..., V] against class indices targets i32 [...]:
 * loss_r = logsumexp(logits_r) - logits_r[target_r] (fused kernel: no softmax tensor is kept).
 * With reduction "mean" the result is sum(loss * mask) / sum(mask), where mask defaults to
 * [target != ignoreIndex]; an all-ignored batch gives 0, not NaN.
 * Gradient: d loss_r / d logits_r = softmax(logits_r) - onehot(target_r) (kernel), times the
 * incoming gradient of each row.
 * Targets outside [0, V) other than ignoreIndex: the cpu device throws a RangeError; the webgpu
 * device gives them zero loss and gradient (they still count in the mean's divisor).
 * @throws ShapeError when targets' shape is not logits' without the last axis; DeviceError when
 *   logits, targets and mask are not on one device.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  assertFloat("crossEntropy", logits);
  targets.assertAlive("crossEntropy");
  assertSameDevice("crossEntropy", logits, targets, opts.mask);
  if (targets.dtype !== "i32") throw new DTypeError("crossEntropy", `targets must be i32, got ${targets.dtype}`);
  const rowShape = logits.shape.slice(0, -1);
  if (targets.shape.join() !== rowShape.join()) {
    throw new ShapeError("crossEntropy", `targets ${fmt(targets.shape)} do not match logits ${fmt(logits.shape)} without the class axis`);
  }
  const ignoreIndex = opts.ignoreIndex ?? -100;
  const { dense, rows, cols } = rowsOf(logits);
  const tg = targets.isDense() ? targets : targets.contiguous(true);
  const be = logits.backend;
  const geo = { rows, cols, ignoreIndex };
  const perRow = Tensor.fromStorage(be, be.run(crossEntropyOp, dense.storage, tg.storage, geo), rowShape);
  release(dense, logits);
  record(perRow, "crossEntropy", [logits], (g) => {
    const lg = rowsOf(logits);
    const gd = g.isDense() ? g : g.contiguous(true);
    const dx = be.run(crossEntropyBackwardOp, lg.dense.storage, tg.storage, gd.storage, geo);
    release(lg.dense, logits);
    release(gd, g);
    return [Tensor.fromStorage(be, dx, logits.shape)];
  });
  // The node reads the targets in backward: keep them alive as long as the node.
  if (perRow.node && tg !== targets) perRow.node.owned = [tg];
  else if (tg !== targets) tg.dispose();
  const reduction = opts.reduction ?? "mean";
  if (reduction === "none") return opts.mask ? perRow.mul(opts.mask) : perRow;
  const weights = opts.mask ?? targets.eq(ignoreIndex).cast(logits.dtype).neg().add(1);
  const total = perRow.mul(weights).sum();
  if (reduction === "sum") return total;
  return total.div(weights.sum().maximum(1));
}
