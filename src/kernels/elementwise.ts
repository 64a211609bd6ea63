import type { HostArray } from "../tensor/dtype.ts";
import { dtypeOf } from "../tensor/dtype.ts";
import { DTypeError } from "../tensor/errors.ts";
import { assertSameShape, numel } from "../tensor/shape.ts";
import type { BinaryOp, UnaryOp } from "../tensor/ops/pointwise_table.ts";
import { binaryDef, unaryDef } from "../tensor/ops/pointwise_table.ts";

/**
 * CPU references of the elementwise kernels: unary, binary, where, assign and cast over strided
 * views. The math of each op lives in the pointwise table (src/tensor/ops/pointwise_table.ts); this file
 * only walks the views. Values are read into JS doubles, computed, and stored into the output's
 * typed array (so an f32 output rounds once, at the store).
 */

/** Where a view's elements sit in a flat array: the layout half of a `View`, in elements. */
export interface StridedLayout {
  readonly strides: readonly number[];
  readonly offset: number;
}

/** A strided view of a host array: a `View` whose storage is plain host data. */
export interface HostView extends StridedLayout {
  readonly data: HostArray;
  readonly shape: readonly number[];
}

/**
 * Walks every element of `shape` in row-major order and calls `visit(i, at)`, where `i` is the
 * element's row-major (contiguous) index and `at[k]` its index in the flat array of `layouts[k]`:
 * `at[k] = offset_k + sum over axes a of idx[a] * strides_k[a]`.
 *
 * The index is kept as an odometer: the last axis advances by one each step, and an axis that
 * wraps around resets to 0 and carries into the axis before it, so each step costs O(1)
 * amortised and no division is needed. Any rank works, including 0 (one element at `offset`);
 * a size-0 axis visits nothing; stride 0 re-reads the same element (broadcast).
 *
 * `at` is reused between calls: read it inside `visit`, do not keep it.
 */
function forEachStrided(
  shape: readonly number[],
  layouts: readonly StridedLayout[],
  visit: (i: number, at: readonly number[]) => void,
): void {
  const n = numel(shape);
  const rank = shape.length;
  const idx = new Array<number>(rank).fill(0);
  const at = layouts.map((l) => l.offset);
  for (let i = 0; i < n; i++) {
    visit(i, at);
    for (let axis = rank - 1; axis >= 0; axis--) {
      idx[axis]!++;
      for (let k = 0; k < layouts.length; k++) at[k]! += layouts[k]!.strides[axis]!;
      if (idx[axis]! < shape[axis]!) break;
      // This axis wrapped: undo its shape[axis] steps and carry into the previous axis.
      for (let k = 0; k < layouts.length; k++) at[k]! -= layouts[k]!.strides[axis]! * shape[axis]!;
      idx[axis] = 0;
    }
  }
}


/**
 * out[i] = f(x[i]) with f from the pointwise table.
 * @param x strided view of any shape; f32, f64, or i32 for the ops whose table row has `int`
 * @param out contiguous, numel(x.shape) elements, same dtype as x
 * @throws DTypeError when x is i32 and `op` is float-only.
 */
export function unaryRef(op: UnaryOp, x: HostView, out: HostArray): void {
  if (dtypeOf(x.data) === "i32" && !unaryDef(op).int) {
    throw new DTypeError(`unary ${op}`, "not defined on i32");
  }
  const f = unaryDef(op).ts;
  const xs = x.data;
  forEachStrided(x.shape, [x], (i, at) => {
    out[i] = f(xs[at[0]!]!);
  });
}

/**
 * out[i] = f(a[i], b[i]) with f from the pointwise table; comparisons give 1 or 0.
 * i32 arithmetic is done in doubles and wraps modulo 2^32 at the store, which matches WGSL's
 * wrapping i32 as long as the exact result fits in 2^53 (true for add and sub; a product of two
 * i32 beyond 2^53 loses its low bits).
 * @param a, b strided views of the output's shape (broadcast by stride 0), same dtype
 * @param out contiguous, numel(a.shape) elements, same dtype as a
 * @throws DTypeError when the dtypes differ, or they are i32 and `op` is float-only (div, pow).
 * @throws ShapeError when the shapes differ.
 */
export function binaryRef(op: BinaryOp, a: HostView, b: HostView, out: HostArray): void {
  const name = `binary ${op}`;
  const dt = dtypeOf(a.data);
  if (dtypeOf(b.data) !== dt) throw new DTypeError(name, `dtypes differ: ${dt} vs ${dtypeOf(b.data)}`);
  if (dt === "i32" && !binaryDef(op).int) throw new DTypeError(name, "not defined on i32");
  assertSameShape(name, a.shape, b.shape);
  const f = binaryDef(op).ts;
  const as = a.data;
  const bs = b.data;
  forEachStrided(a.shape, [a, b], (i, at) => {
    out[i] = f(as[at[0]!]!, bs[at[1]!]!);
  });
}

/**
 * out[i] = cond[i] != 0 ? a[i] : b[i].
 * @param cond strided view of the output's shape, any dtype
 * @param a, b strided views of the output's shape, same dtype
 * @param out contiguous, same dtype as a
 * @throws DTypeError when a and b differ in dtype; ShapeError when shapes differ.
 */
export function whereRef(cond: HostView, a: HostView, b: HostView, out: HostArray): void {
  if (dtypeOf(a.data) !== dtypeOf(b.data)) {
    throw new DTypeError("where", `dtypes differ: ${dtypeOf(a.data)} vs ${dtypeOf(b.data)}`);
  }
  assertSameShape("where", cond.shape, a.shape);
  assertSameShape("where", a.shape, b.shape);
  const cs = cond.data;
  const as = a.data;
  const bs = b.data;
  forEachStrided(a.shape, [cond, a, b], (i, at) => {
    out[i] = cs[at[0]!] !== 0 ? as[at[1]!]! : bs[at[2]!]!;
  });
}

/**
 * dst[i] = src[i], in place through the strided view dst. `src` is read completely before
 * anything is written, so overlapping views of one array (x[1:] = x[:-1]) behave as a copy.
 * @param dst, src strided views of one shape and dtype
 * @throws DTypeError when dtypes differ; ShapeError when shapes differ.
 */
export function assignRef(dst: HostView, src: HostView): void {
  if (dtypeOf(dst.data) !== dtypeOf(src.data)) {
    throw new DTypeError("assign", `dtypes differ: ${dtypeOf(dst.data)} vs ${dtypeOf(src.data)}`);
  }
  assertSameShape("assign", dst.shape, src.shape);
  const values = new Float64Array(numel(src.shape));
  const ss = src.data;
  forEachStrided(src.shape, [src], (i, at) => {
    values[i] = ss[at[0]!]!;
  });
  const ds = dst.data;
  forEachStrided(dst.shape, [dst], (i, at) => {
    ds[at[0]!] = values[i]!;
  });
}

const I32_MIN = -2147483648;
const I32_MAX = 2147483647;

/**
 * Float to i32 the way WGSL's `i32(f32)` converts: truncate toward zero (-2.7 -> -2), then
 * saturate to [-2^31, 2^31 - 1]; NaN becomes 0.
 */
export function toInt32(x: number): number {
  if (Number.isNaN(x)) return 0;
  return Math.min(I32_MAX, Math.max(I32_MIN, Math.trunc(x)));
}

/**
 * Converts between dtypes: float -> i32 by `toInt32`; i32 -> float and f64 <-> f32 by the typed
 * array's store (round to nearest).
 * @param x strided view, any dtype
 * @param out contiguous, numel(x.shape) elements, of the target dtype
 */
export function castRef(x: HostView, out: HostArray): void {
  const convert = dtypeOf(out) === "i32" ? toInt32 : (v: number) => v;
  const xs = x.data;
  forEachStrided(x.shape, [x], (i, at) => {
    out[i] = convert(xs[at[0]!]!);
  });
}
