import { noGrad, record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { DTypeError } from "../errors.ts";
import { isFloat } from "../dtype.ts";
import { normAxes, numel } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { broadcastView } from "./views.ts";

export type ReduceOp = "sum" | "max";

/**
 * x: contiguous [rows, cols] -> [rows], reducing each row (max over no elements is a ShapeError).
 * Kernels: src/kernels/reduce.ts, reduce.wgsl.ts.
 */
export const reduceRowsOp = deviceOp<[op: ReduceOp, x: Storage, rows: number, cols: number], Storage>("reduceRows");

/**
 * Reductions over any set of axes, with keepdim. The reduced axes are moved last and made
 * contiguous, so that every reduction is one row-wise kernel (`reduceRows`) over
 * [kept elements, reduced elements].
 */
function reduceAxes(op: ReduceOp, x: Tensor, axesIn: number | number[] | undefined, keepdim: boolean): { y: Tensor; keptShape: number[] } {
  x.assertAlive(op);
  if (!isFloat(x.dtype) && op === "sum") {
    // Integer sums are fine on the host side of the API but not needed by any kernel path.
    throw new DTypeError(op, `needs a float tensor, got ${x.dtype}`);
  }
  const axes = normAxes(op, axesIn, x.rank);
  const kept = Array.from({ length: x.rank }, (_, i) => i).filter((i) => !axes.includes(i));
  const rows = numel(kept.map((i) => x.shape[i]!));
  const cols = numel(axes.map((i) => x.shape[i]!));
  // Row-major [kept..., reduced...]; a view when no data needs to move, else one copy.
  const moved = x.view(
    [...kept, ...axes].map((i) => x.shape[i]!),
    [...kept, ...axes].map((i) => x.strides[i]!),
    x.offset,
  );
  const dense = moved.isDense() ? moved : moved.contiguous(true);
  const out = x.backend.run(reduceRowsOp, op, dense.storage, rows, cols);
  if (dense !== moved) dense.dispose();
  moved.dispose();
  const keptShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const shape = keepdim ? keptShape : kept.map((i) => x.shape[i]!);
  return { y: Tensor.fromStorage(x.backend, out, shape), keptShape };
}

/** Sum over `axes` (default: all). Gradient: the incoming gradient broadcast back. */
export function sum(x: Tensor, axes?: number | number[], keepdim = false): Tensor {
  const { y, keptShape } = reduceAxes("sum", x, axes, keepdim);
  return record(y, "sum", [x], (g) => [broadcastView(g.reshape(keptShape), x.shape).contiguous(true)]);
}

/**
 * Mean over `axes` (default: all). Gradient: the incoming gradient broadcast back, divided by
 * the count. The mean of no elements is 0 / 0 = NaN, as torch.mean gives.
 */
export function mean(x: Tensor, axes?: number | number[], keepdim = false): Tensor {
  const { y: total, keptShape } = reduceAxes("sum", x, axes, keepdim);
  const count = numel(normAxes("mean", axes, x.rank).map((i) => x.shape[i]!));
  const y = noGrad(() => total.div(count));
  total.dispose();
  return record(y, "mean", [x], (g) => [broadcastView(g.reshape(keptShape), x.shape).div(count)]);
}

/**
 * Maximum over `axes`. Gradient: split equally among the positions that attain the maximum
 * (d max / d x_i = [x_i == max] / #ties), as torch.amax does.
 */
export function max(x: Tensor, axes?: number | number[], keepdim = false): Tensor {
  const { y, keptShape } = reduceAxes("max", x, axes, keepdim);
  return record(y, "max", [x], (g) => {
    const yk = broadcastView(y.reshape(keptShape), x.shape);
    const hit = x.eq(yk);
    const ties = hit.sum(normAxes("max", axes, x.rank), true);
    return [hit.div(ties).mul(broadcastView(g.reshape(keptShape), x.shape))];
  });
}
