import { record } from "../autograd.ts";
import { assertSameDevice } from "../device.ts";
import { assertDType, isFloat, type DType } from "../dtype.ts";
import { DTypeError } from "../errors.ts";
import { broadcastShapes } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { fullLike } from "./create.ts";
import type { BinaryOp, UnaryOp } from "./pointwise_table.ts";
import { binaryDef, unaryDef } from "./pointwise_table.ts";
import { broadcastView, sumTo } from "./views.ts";

/**
 * Elementwise ops. Everything about each op (its formula on both devices, the dtypes it takes,
 * its gradient with derivation) is a row of the pointwise table (pointwise_table.ts); here the
 * rows become ops that check their arguments and record the gradient.
 */

/**
 * y = f(x) elementwise (f from the pointwise table), any dtype the op supports.
 * @throws DTypeError for an i32 tensor and a float-only op (the table's `int` is false)
 */
export function unary(op: UnaryOp, x: Tensor): Tensor {
  x.assertAlive(op);
  const def = unaryDef(op);
  if (!isFloat(x.dtype) && !def.int) throw new DTypeError(op, `needs a float tensor, got ${x.dtype}`);
  const y = Tensor.fromStorage(x.backend, x.backend.unary(op, x), x.shape);
  const grad = def.grad;
  if (grad === null) return y;
  return record(y, op, [x], (g) => [grad(x, y, g)]);
}

/** A scalar operand in `like`'s dtype and device. */
function scalarLike(like: Tensor, value: number): Tensor {
  return fullLike(like, value, []);
}

/**
 * y = a (op) b with NumPy broadcasting. Numbers become scalars of a's dtype. For maximum and
 * minimum, a tie sends the gradient to `a`. Comparisons (eq, gt, ge, lt) return 1/0 in the
 * input dtype and have no gradient. `pow` follows WGSL: defined for a > 0.
 * @throws ShapeError when shapes do not broadcast; DTypeError when dtypes differ or the op
 *   is not defined on integers; DeviceError when a and b are on different devices.
 */
export function binary(op: BinaryOp, a: Tensor, bIn: Tensor | number): Tensor {
  a.assertAlive(op);
  const b = typeof bIn === "number" ? scalarLike(a, bIn) : bIn.assertAlive(op);
  try {
    assertSameDevice(op, a, b);
    if (a.dtype !== b.dtype) throw new DTypeError(op, `dtypes differ: ${a.dtype} vs ${b.dtype}`);
    const def = binaryDef(op);
    if (!isFloat(a.dtype) && !def.int) throw new DTypeError(op, `not defined on ${a.dtype}`);
    const shape = broadcastShapes(op, a.shape, b.shape);
    const y = Tensor.fromStorage(a.backend, a.backend.binary(op, broadcastView(a, shape), broadcastView(b, shape)), shape);
    const grad = def.grad;
    if (grad !== null) {
      record(y, op, [a, b], (g) => {
        const [ga, gb] = grad(a, b, y, g);
        return [sumTo(ga, a.shape), sumTo(gb, b.shape)];
      });
    }
    return ownScalars(y, typeof bIn === "number" ? [b] : []);
  } catch (err) {
    if (typeof bIn === "number") b.dispose();
    throw err;
  }
}

/**
 * Scalars made from number operands live exactly as long as someone may read them: disposed at
 * once when no graph was recorded, else owned by the node and disposed with it.
 */
function ownScalars(y: Tensor, scalars: Tensor[]): Tensor {
  if (scalars.length === 0) return y;
  if (y.node === null) for (const s of scalars) s.dispose();
  else y.node.owned = scalars;
  return y;
}

/**
 * y = cond ? a : b elementwise, all three broadcast together; cond is nonzero-is-true in any
 * dtype. Gradients flow to a where cond holds and to b elsewhere.
 * @throws DeviceError when the tensors are on different devices; DTypeError when the branch
 *   dtypes differ; ShapeError when the shapes do not broadcast.
 */
export function where(cond: Tensor, a: Tensor | number, b: Tensor | number): Tensor {
  assertSameDevice("where", cond, typeof a === "number" ? null : a, typeof b === "number" ? null : b);
  const like = typeof a !== "number" ? a : typeof b !== "number" ? b : cond;
  const ta = typeof a === "number" ? scalarLike(like, a) : a;
  const tb = typeof b === "number" ? scalarLike(like, b) : b;
  const scalars = [a, b].flatMap((v, i) => (typeof v === "number" ? [i === 0 ? ta : tb] : []));
  if (ta.dtype !== tb.dtype) throw new DTypeError("where", `branch dtypes differ: ${ta.dtype} vs ${tb.dtype}`);
  const shape = broadcastShapes("where", broadcastShapes("where", cond.shape, ta.shape), tb.shape);
  const y = Tensor.fromStorage(
    cond.backend,
    cond.backend.where(broadcastView(cond, shape), broadcastView(ta, shape), broadcastView(tb, shape)),
    shape,
  );
  record(y, "where", [ta, tb], (g) => [sumTo(where(cond, g, 0), ta.shape), sumTo(where(cond, 0, g), tb.shape)]);
  return ownScalars(y, scalars);
}

/**
 * Converts dtype. Float to float keeps gradients; anything involving i32 has none.
 * @throws DTypeError for an unknown dtype.
 */
export function cast(x: Tensor, dtype: DType): Tensor {
  x.assertAlive("cast");
  assertDType("cast", dtype);
  if (x.dtype === dtype) return x.contiguous(true);
  const y = Tensor.fromStorage(x.backend, x.backend.cast(x, dtype), x.shape);
  if (!isFloat(dtype) || !isFloat(x.dtype)) return y;
  return record(y, "cast", [x], (g) => [cast(g, x.dtype)]);
}
