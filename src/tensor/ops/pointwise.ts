import { record } from "../autograd.ts";
import type { BinaryOp, UnaryOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { assertDType, isFloat, type DType } from "../dtype.ts";
import { DTypeError } from "../errors.ts";
import { broadcastShapes } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { fullLike } from "./create.ts";
import { broadcastView, sumTo } from "./views.ts";

/**
 * Elementwise ops and their gradients. The forward math of every op is in the pointwise table
 * (src/kernels/pointwise.ts); here each op gets its derivative, written with tensor ops.
 * `y` is the op's output, `g` the incoming gradient d loss / d y.
 */
const UNARY_GRAD: Record<UnaryOp, ((x: Tensor, y: Tensor, g: Tensor) => Tensor) | null> = {
  copy: (_x, _y, g) => g,
  neg: (_x, _y, g) => g.neg(),
  exp: (_x, y, g) => g.mul(y), // d e^x = e^x
  log: (x, _y, g) => g.div(x), // d ln x = 1/x
  sqrt: (_x, y, g) => g.div(y.mul(2)), // d sqrt(x) = 1 / (2 sqrt(x))
  rsqrt: (_x, y, g) => g.mul(y.pow(3).mul(-0.5)), // d x^(-1/2) = -x^(-3/2) / 2 = -y^3 / 2
  abs: (x, _y, g) => g.mul(unary("sign", x)),
  sign: null, // piecewise constant: zero gradient
  // silu = x s(x): d/dx = s(x) + x s(x)(1 - s(x)) = s(x)(1 + x(1 - s(x)))
  silu: (x, _y, g) => {
    const s = x.sigmoid();
    return g.mul(s.mul(x.mul(s.neg().add(1)).add(1)));
  },
  sigmoid: (_x, y, g) => g.mul(y.mul(y.neg().add(1))), // s' = s(1 - s)
  tanh: (_x, y, g) => g.mul(y.square().neg().add(1)), // tanh' = 1 - tanh^2
  // gelu = x/2 (1 + t), t = tanh(u), u = c (x + a x^3):
  // d/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 a x^2)
  gelu: (x, _y, g) => {
    const c = 0.7978845608028654;
    const a = 0.044715;
    const x2 = x.square();
    const t = x.mul(x2.mul(a).add(1)).mul(c).tanh();
    const dt = t.square().neg().add(1).mul(x2.mul(3 * a).add(1)).mul(c);
    return g.mul(t.add(1).mul(0.5).add(x.mul(0.5).mul(dt)));
  },
  relu: (x, _y, g) => g.mul(x.gt(0)),
  square: (x, _y, g) => g.mul(x.mul(2)),
  reciprocal: (_x, y, g) => g.mul(y.square()).neg(), // d 1/x = -1/x^2
};

/** y = f(x) elementwise (f from the pointwise table), any dtype the op supports. */
export function unary(op: UnaryOp, x: Tensor): Tensor {
  x.assertAlive(op);
  if (!isFloat(x.dtype) && op !== "copy" && op !== "neg" && op !== "abs") {
    throw new DTypeError(op, `needs a float tensor, got ${x.dtype}`);
  }
  const y = Tensor.fromStorage(x.backend, x.backend.unary(op, x), x.shape);
  const grad = UNARY_GRAD[op];
  if (grad === null) return y;
  return record(y, op, [x], (g) => [grad(x, y, g)]);
}

/** Gradient rules of binary ops, before reduction to each input's (broadcast) shape. */
const BINARY_GRAD: Record<BinaryOp, ((a: Tensor, b: Tensor, y: Tensor, g: Tensor) => [Tensor, Tensor]) | null> = {
  add: (_a, _b, _y, g) => [g, g],
  sub: (_a, _b, _y, g) => [g, g.neg()],
  mul: (a, b, _y, g) => [g.mul(b), g.mul(a)],
  div: (_a, b, y, g) => [g.div(b), g.mul(y).div(b).neg()], // d(a/b)/db = -a/b^2 = -y/b
  // d a^b / da = b a^(b-1); d a^b / db = a^b ln a (defined for a > 0, as the forward is)
  pow: (a, b, y, g) => [g.mul(b).mul(a.pow(b.sub(1))), g.mul(y).mul(a.log())],
  // Ties send the whole gradient to `a`, as the subgradient convention of torch.maximum does not: document it.
  maximum: (a, b, _y, g) => [g.mul(a.ge(b)), g.mul(a.lt(b))],
  minimum: (a, b, _y, g) => [g.mul(b.ge(a)), g.mul(b.lt(a))],
  eq: null,
  gt: null,
  ge: null,
  lt: null,
};

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
    if (!isFloat(a.dtype) && (op === "div" || op === "pow")) throw new DTypeError(op, `not defined on ${a.dtype}`);
    const shape = broadcastShapes(op, a.shape, b.shape);
    const y = Tensor.fromStorage(a.backend, a.backend.binary(op, broadcastView(a, shape), broadcastView(b, shape)), shape);
    const grad = BINARY_GRAD[op];
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
