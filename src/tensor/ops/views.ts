import { record } from "../autograd.ts";
import { assertSameDevice } from "../device.ts";
import { ShapeError, fmt } from "../errors.ts";
import { assertValidShape, contiguousStrides, isContiguous, normAxis, numel } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { zeros } from "./create.ts";

/**
 * Views: new shapes and strides over the same storage, no copy (candle's layout idea), plus
 * the copies that views cannot express (contiguous, concat). Each records its gradient:
 * the inverse view, or for expand and broadcasting the sum over the broadcast axes.
 */

/** `x` seen with `shape` by NumPy broadcasting: new and size-1 axes get stride 0. No autograd (ops reduce grads with sumTo). */
export function broadcastView(x: Tensor, shape: readonly number[]): Tensor {
  const lead = shape.length - x.rank;
  if (lead < 0) throw new ShapeError("broadcast", `cannot broadcast ${fmt(x.shape)} to ${fmt(shape)}`);
  const strides = shape.map((d, i) => {
    if (i < lead) return 0;
    const xd = x.shape[i - lead]!;
    if (xd === d) return xd === 1 ? 0 : x.strides[i - lead]!;
    if (xd === 1) return 0;
    throw new ShapeError("broadcast", `cannot broadcast ${fmt(x.shape)} to ${fmt(shape)}`);
  });
  return x.view(shape, strides, x.offset);
}

/** Sums `g` down to `shape`, the reverse of broadcasting `shape` up to g's shape. Returns `g` itself when shapes match. */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.join() === shape.join()) return g;
  const lead = g.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  return g.sum(axes, true).reshape(shape);
}

/** A row-major tensor: `x` itself (as a new view) when already dense, else a copy. */
export function contiguous(x: Tensor, force = false): Tensor {
  x.assertAlive("contiguous");
  if (!force && x.isDense()) return record(x.detach(), "contiguous", [x], (g) => [g]);
  const y = Tensor.fromStorage(x.backend, x.backend.unary("copy", x), x.shape);
  return record(y, "contiguous", [x], (g) => [g]);
}

/**
 * The same elements in a new shape; one size may be -1 (inferred). A view when `x` is
 * row-major, else a copy first.
 * @throws ShapeError when the sizes disagree.
 */
export function reshape(x: Tensor, shapeIn: readonly number[]): Tensor {
  x.assertAlive("reshape");
  const known = shapeIn.filter((d) => d !== -1);
  const inferred = shapeIn.length - known.length;
  if (inferred > 1) throw new ShapeError("reshape", `more than one -1 in ${fmt(shapeIn)}`);
  const rest = numel(known);
  const shape = shapeIn.map((d) => (d === -1 ? (rest === 0 ? 0 : x.size / rest) : d));
  assertValidShape("reshape", shape);
  if (numel(shape) !== x.size) throw new ShapeError("reshape", `cannot reshape ${fmt(x.shape)} (${x.size} elements) to ${fmt(shapeIn)}`);
  const src = isContiguous(x.shape, x.strides) ? x : contiguous(x, true);
  const y = src.view(shape, contiguousStrides(shape), src.offset);
  if (src !== x) src.dispose();
  return record(y, "reshape", [x], (g) => [reshape(g, x.shape)]);
}

/** Reorders axes: y.shape[i] = x.shape[axes[i]]. A view. */
export function permute(x: Tensor, axes: readonly number[]): Tensor {
  x.assertAlive("permute");
  const norm = axes.map((a) => normAxis("permute", a, x.rank));
  if (norm.length !== x.rank || new Set(norm).size !== x.rank) {
    throw new ShapeError("permute", `axes ${fmt(axes)} are not a permutation of ${x.rank} axes`);
  }
  const y = x.view(
    norm.map((a) => x.shape[a]!),
    norm.map((a) => x.strides[a]!),
    x.offset,
  );
  const inverse = new Array<number>(x.rank);
  norm.forEach((a, i) => (inverse[a] = i));
  return record(y, "permute", [x], (g) => [permute(g, inverse)]);
}

/** Swaps two axes (default: the last two). A view. */
export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const axes = Array.from({ length: x.rank }, (_, i) => i);
  const i = normAxis("transpose", a, x.rank);
  const j = normAxis("transpose", b, x.rank);
  [axes[i], axes[j]] = [axes[j]!, axes[i]!];
  return permute(x, axes);
}

/**
 * Elements [start, end) of `axis`, a view (like x[..., start:end, ...] in NumPy; negative
 * indices count from the end). Unlike NumPy, an out-of-range bound is an error, not clamped.
 * @throws ShapeError naming the range, the axis and the shape.
 */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  x.assertAlive("slice");
  const ax = normAxis("slice", axis, x.rank);
  const n = x.shape[ax]!;
  const s = start < 0 ? start + n : start;
  const e = end < 0 ? end + n : end;
  if (!(Number.isInteger(s) && Number.isInteger(e) && 0 <= s && s <= e && e <= n)) {
    throw new ShapeError("slice", `range [${start}, ${end}) out of bounds for axis ${axis} of ${fmt(x.shape)}`);
  }
  const shape = x.shape.slice();
  shape[ax] = e - s;
  const y = x.view(shape, x.strides, x.offset + s * x.strides[ax]!);
  return record(y, "slice", [x], (g) => {
    // The gradient of a slice is the incoming gradient placed in a zero tensor of x's shape.
    const gx = zeros(x.shape, { device: g.backend, dtype: g.dtype });
    const dst = slice(gx, ax, s, e);
    g.backend.assign(dst, g);
    dst.dispose();
    return [gx];
  });
}

/** Broadcasts size-1 (or new leading) axes to `shape`; -1 keeps a size. A view. */
export function expand(x: Tensor, shapeIn: readonly number[]): Tensor {
  const lead = shapeIn.length - x.rank;
  const shape = shapeIn.map((d, i) => (d === -1 ? x.shape[i - lead]! : d));
  const y = broadcastView(x, shape);
  return record(y, "expand", [x], (g) => [sumTo(g, x.shape)]);
}

/** Inserts a size-1 axis at `axis`. A view. */
export function unsqueeze(x: Tensor, axis: number): Tensor {
  x.assertAlive("unsqueeze");
  const ax = normAxis("unsqueeze", axis, x.rank + 1);
  const shape = x.shape.slice();
  const strides = x.strides.slice();
  shape.splice(ax, 0, 1);
  strides.splice(ax, 0, 0); // the stride of a size-1 axis is never used
  const y = x.view(shape, strides, x.offset);
  return record(y, "unsqueeze", [x], (g) => [squeeze(g, ax)]);
}

/** Removes the size-1 axis `axis`. A view. */
export function squeeze(x: Tensor, axis: number): Tensor {
  x.assertAlive("squeeze");
  const ax = normAxis("squeeze", axis, x.rank);
  if (x.shape[ax] !== 1) throw new ShapeError("squeeze", `axis ${axis} of ${fmt(x.shape)} has size ${x.shape[ax]}, not 1`);
  const shape = x.shape.slice();
  const strides = x.strides.slice();
  shape.splice(ax, 1);
  strides.splice(ax, 1);
  const y = x.view(shape, strides, x.offset);
  return record(y, "squeeze", [x], (g) => [unsqueeze(g, ax)]);
}

/**
 * Joins tensors along `axis`; all other sizes must agree.
 * @throws ShapeError naming the first disagreeing input; DeviceError when the inputs are not on one device.
 */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new ShapeError("concat", "no tensors");
  assertSameDevice("concat", ...xs);
  const first = xs[0]!;
  const ax = normAxis("concat", axis, first.rank);
  for (const [i, x] of xs.entries()) {
    x.assertAlive("concat");
    if (x.rank !== first.rank || x.shape.some((d, j) => j !== ax && d !== first.shape[j]) || x.dtype !== first.dtype) {
      throw new ShapeError("concat", `input ${i} ${fmt(x.shape)} ${x.dtype} does not match ${fmt(first.shape)} ${first.dtype} on axes other than ${ax}`);
    }
  }
  const shape = first.shape.slice();
  shape[ax] = xs.reduce((s, x) => s + x.shape[ax]!, 0);
  const y = zeros(shape, { device: first.backend, dtype: first.dtype });
  const starts: number[] = [];
  let at = 0;
  for (const x of xs) {
    starts.push(at);
    const dst = y.view(x.shape, y.strides, y.offset + at * y.strides[ax]!);
    y.backend.assign(dst, x);
    dst.dispose();
    at += x.shape[ax]!;
  }
  return record(y, "concat", [...xs], (g) => xs.map((x, i) => slice(g, ax, starts[i]!, starts[i]! + x.shape[ax]!).contiguous()));
}
