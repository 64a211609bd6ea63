import type { Tensor } from "../tensor.ts";

/**
 * The pointwise op table: each elementwise function once, with everything about it.
 * - `ts`: the CPU reference, evaluated in JS doubles and rounded once at the store;
 * - `wgsl`: the WGSL expression over `x` (unary) or `a`, `b` (binary), the same text for f32 and,
 *   where `int` holds, i32 (a comparison's `wgsl` is the bool test; the kernel turns it into 1/0);
 * - `int`: whether the op accepts i32 (it is closed over the integers); float-only otherwise;
 * - `grad`: the backward rule with tensor ops (x the input, y = f(x), g = d loss / d y), with
 *   its derivation, or null for a piecewise-constant op (no gradient);
 * - `test`: the inputs and tolerances the test suites draw from the row: `smooth` maps a random
 *   draw u (about unit size) into the region where the op is smooth (finite differences, device
 *   comparisons); `wide` maps u and a magnitude m in 1e-30..1e30 to the kernel test's inputs;
 *   `wgsl` is WGSL's accuracy for the expression against the f32-rounded double (relative,
 *   absolute) and why.
 *
 * The Tensor methods (`x.exp()`, `a.add(b)`), both devices' kernels, the tensor-level dtype
 * checks and the three test suites (autograd, ops_devices, kernels_webgpu) all iterate this
 * table, so a new elementwise op is one row here.
 */

/** A tolerance: |device - reference| <= abs + rel |reference|, with its reason. */
export interface PointwiseTol {
  rel: number;
  abs: number;
  why: string;
}

export interface UnaryDef {
  ts: (x: number) => number;
  wgsl: string;
  int: boolean;
  grad: ((x: Tensor, y: Tensor, g: Tensor) => Tensor) | null;
  /** Not a Tensor method (copy: the strided copy behind `contiguous()`). */
  internal?: boolean;
  test: { smooth: (u: number) => number; wide: (u: number, m: number) => number; wgsl: PointwiseTol };
}

export interface BinaryDef {
  ts: (a: number, b: number) => number;
  wgsl: string;
  int: boolean;
  /** A comparison: `wgsl` is a bool, the result 1 or 0 in the operands' dtype. */
  compare?: boolean;
  grad: ((a: Tensor, b: Tensor, y: Tensor, g: Tensor) => [Tensor, Tensor]) | null;
  test: {
    smooth: readonly [(u: number) => number, (u: number) => number];
    wide: readonly [(u: number, m: number) => number, (u: number, m: number) => number];
    wgsl: PointwiseTol;
  };
}

/** sqrt(2 / pi), for the tanh form of GELU. */
const GELU_C = 0.7978845608028654;
/** The cubic coefficient of the tanh form of GELU. */
const GELU_A = 0.044715;

/**
 * tanh(x) written so that WGSL and TypeScript agree at large |x|: WGSL's builtin tanh may
 * overflow on some drivers, so both clamp the argument to +-15 (tanh(15) = 1 - 2e-13).
 */
const WGSL_TANH = (e: string) => `tanh(clamp(${e}, -15.0, 15.0))`;
const tanh15 = (x: number) => Math.tanh(Math.max(-15, Math.min(15, x)));

// ---- test domains and tolerances shared by several rows ----

const same = (u: number) => u;
/** Away from 0, keeping the sign: ops with a kink at 0 (abs, relu). */
const offZero = (u: number) => (Math.abs(u) + 0.1) * Math.sign(u || 1);
/** Positive, away from 0: log, sqrt, rsqrt, reciprocal's singularity. */
const positive = (u: number) => Math.abs(u) + 0.5;
const anyMag = (u: number, m: number) => u * m;
const positiveMag = (u: number, m: number) => (Math.abs(u) + 0.01) * m;
/** exp-based ops overflow f32 beyond |x| ~ 88: [-20, 20] whatever the magnitude. */
const moderate = (u: number) => u * 20;
/** Binary kernel inputs: eighths times the magnitude. */
const quantized = (u: number, m: number) => (Math.round(u * 8) / 8) * m;
const EXACT: PointwiseTol = { rel: 0, abs: 0, why: "one exactly rounded operation, same as the f32 rounding of the double result" };
// WGSL accuracy: exp is 3 + 2|x| ulp, log 3 ulp or 2^-21 absolute near 1, division and
// inverseSqrt 2.5 ulp; composites (silu, gelu, tanh) add an ulp per step and an absolute term
// where 1 + tanh or 1 + exp cancels.
const TRANSCENDENTAL: PointwiseTol = { rel: 1e-5, abs: 1e-6, why: "exp-based on [-20, 20]: 3 + 2|x| ulp of exp, plus cancellation near 0" };

export const UNARY = {
  copy: { ts: (x) => x, wgsl: "x", int: true, internal: true, grad: (_x, _y, g): Tensor => g, test: { smooth: same, wide: anyMag, wgsl: EXACT } },
  neg: { ts: (x) => -x, wgsl: "-x", int: true, grad: (_x, _y, g): Tensor => g.neg(), test: { smooth: same, wide: anyMag, wgsl: EXACT } },
  exp: {
    ts: Math.exp,
    wgsl: "exp(x)",
    int: false,
    grad: (_x, y, g): Tensor => g.mul(y), // d e^x = e^x
    test: { smooth: same, wide: moderate, wgsl: { rel: 5e-6, abs: 0, why: "3 + 2|x| ulp for |x| <= 20, 43 ulp = 5e-6" } },
  },
  log: {
    ts: Math.log,
    wgsl: "log(x)",
    int: false,
    grad: (x, _y, g): Tensor => g.div(x), // d ln x = 1/x
    test: { smooth: positive, wide: positiveMag, wgsl: { rel: 1e-6, abs: 1e-6, why: "3 ulp, or 2^-21 absolute near 1" } },
  },
  sqrt: {
    ts: Math.sqrt,
    wgsl: "sqrt(x)",
    int: false,
    grad: (_x, y, g): Tensor => g.div(y.mul(2)), // d sqrt(x) = 1 / (2 sqrt(x))
    test: { smooth: positive, wide: positiveMag, wgsl: { rel: 1e-6, abs: 0, why: "2.5 ulp (via inverseSqrt)" } },
  },
  rsqrt: {
    ts: (x) => 1 / Math.sqrt(x),
    wgsl: "inverseSqrt(x)",
    int: false,
    grad: (_x, y, g): Tensor => g.mul(y.pow(3).mul(-0.5)), // d x^(-1/2) = -x^(-3/2) / 2 = -y^3 / 2
    test: { smooth: positive, wide: positiveMag, wgsl: { rel: 1e-6, abs: 0, why: "2 ulp" } },
  },
  abs: { ts: Math.abs, wgsl: "abs(x)", int: true, grad: (x, _y, g): Tensor => g.mul(x.sign()), test: { smooth: offZero, wide: anyMag, wgsl: EXACT } },
  sign: { ts: Math.sign, wgsl: "sign(x)", int: true, grad: null, test: { smooth: offZero, wide: anyMag, wgsl: EXACT } },
  // silu(x) = x * sigmoid(x) (Llama's MLP activation, "swish").
  silu: {
    ts: (x) => x / (1 + Math.exp(-x)),
    wgsl: "x / (1.0 + exp(-x))",
    int: false,
    // silu = x s(x): d/dx = s(x) + x s(x)(1 - s(x)) = s(x)(1 + x(1 - s(x)))
    grad: (x, _y, g): Tensor => {
      const s = x.sigmoid();
      return g.mul(s.mul(x.mul(s.neg().add(1)).add(1)));
    },
    test: { smooth: (u) => 3 * u, wide: moderate, wgsl: TRANSCENDENTAL },
  },
  sigmoid: {
    ts: (x) => 1 / (1 + Math.exp(-x)),
    wgsl: "1.0 / (1.0 + exp(-x))",
    int: false,
    grad: (_x, y, g): Tensor => g.mul(y.mul(y.neg().add(1))), // s' = s(1 - s)
    test: { smooth: (u) => 3 * u, wide: moderate, wgsl: TRANSCENDENTAL },
  },
  tanh: {
    ts: tanh15,
    wgsl: WGSL_TANH("x"),
    int: false,
    grad: (_x, y, g): Tensor => g.mul(y.square().neg().add(1)), // tanh' = 1 - tanh^2
    test: { smooth: (u) => 2 * u, wide: moderate, wgsl: TRANSCENDENTAL },
  },
  // GELU, tanh form (PyTorch gelu(approximate="tanh")): 0.5 x (1 + tanh(c (x + a x^3))).
  gelu: {
    ts: (x) => 0.5 * x * (1 + tanh15(GELU_C * (x + GELU_A * x * x * x))),
    wgsl: `0.5 * x * (1.0 + ${WGSL_TANH(`${GELU_C} * (x + ${GELU_A} * x * x * x)`)})`,
    int: false,
    // gelu = x/2 (1 + t), t = tanh(u), u = c (x + a x^3):
    // d/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 a x^2)
    grad: (x, _y, g): Tensor => {
      const x2 = x.square();
      const t = x.mul(x2.mul(GELU_A).add(1)).mul(GELU_C).tanh();
      const dt = t.square().neg().add(1).mul(x2.mul(3 * GELU_A).add(1)).mul(GELU_C);
      return g.mul(t.add(1).mul(0.5).add(x.mul(0.5).mul(dt)));
    },
    test: { smooth: (u) => 3 * u, wide: moderate, wgsl: TRANSCENDENTAL },
  },
  relu: { ts: (x) => (x <= 0 ? 0 : x) /* NaN stays NaN, as torch.relu */, wgsl: "max(x, 0.0)", int: false, grad: (x, _y, g): Tensor => g.mul(x.gt(0)), test: { smooth: offZero, wide: anyMag, wgsl: EXACT } },
  square: {
    ts: (x) => x * x,
    wgsl: "x * x",
    int: true,
    grad: (x, _y, g): Tensor => g.mul(x.mul(2)), // d x^2 = 2x
    test: { smooth: same, wide: (u, m) => u * Math.sqrt(m), wgsl: EXACT },
  },
  reciprocal: {
    ts: (x) => 1 / x,
    wgsl: "1.0 / x",
    int: false,
    grad: (_x, y, g): Tensor => g.mul(y.square()).neg(), // d 1/x = -1/x^2
    test: { smooth: positive, wide: (u, m) => Math.sign(u || 1) * (Math.abs(u) + 0.01) * m, wgsl: { rel: 1e-6, abs: 0, why: "2.5 ulp" } },
  },
} as const satisfies Record<string, UnaryDef>;

/** Elementwise functions of one argument: the rows of UNARY. */
export type UnaryOp = keyof typeof UNARY;
/** Every unary op, in table order. */
export const UNARY_OPS = Object.keys(UNARY) as UnaryOp[];
/** The unary ops that are Tensor methods (all but the internal copy). */
export type UnaryMethod = { [K in UnaryOp]: (typeof UNARY)[K] extends { internal: true } ? never : K }[UnaryOp];

/**
 * Operands of the exact rows (arithmetic, comparisons): any values; the kernel test's quantized
 * to eighths, so that comparisons meet equal operands.
 */
const plain = { smooth: [same, same], wide: [quantized, quantized], wgsl: EXACT } as const;
/** Distinct values for maximum and minimum (a even, b odd quarter steps): away from ties, where they are not differentiable. */
const untied = [(u: number) => 2 * Math.round(u * 4), (u: number) => 2 * Math.round(u * 4) + 1] as const;

export const BINARY = {
  add: { ts: (a, b) => a + b, wgsl: "a + b", int: true, grad: (_a, _b, _y, g): [Tensor, Tensor] => [g, g], test: plain },
  sub: { ts: (a, b) => a - b, wgsl: "a - b", int: true, grad: (_a, _b, _y, g): [Tensor, Tensor] => [g, g.neg()], test: plain },
  mul: { ts: (a, b) => a * b, wgsl: "a * b", int: true, grad: (a, b, _y, g): [Tensor, Tensor] => [g.mul(b), g.mul(a)], test: plain },
  div: {
    ts: (a, b) => a / b,
    wgsl: "a / b",
    int: false,
    grad: (_a, b, y, g): [Tensor, Tensor] => [g.div(b), g.mul(y).div(b).neg()], // d(a/b)/db = -a/b^2 = -y/b
    test: { smooth: [same, positive], wide: [quantized, (u, m) => (Math.round(u * 8) / 8 + 2) * m], wgsl: { rel: 1e-6, abs: 0, why: "2.5 ulp" } },
  },
  pow: {
    ts: Math.pow,
    wgsl: "pow(a, b)",
    int: false,
    // d a^b / da = b a^(b-1); d a^b / db = a^b ln a (defined for a > 0, as the forward is)
    grad: (a, b, y, g): [Tensor, Tensor] => [g.mul(b).mul(a.pow(b.sub(1))), g.mul(y).mul(a.log())],
    test: {
      smooth: [positive, same],
      wide: [(u) => Math.abs(u) * 10 + 0.01, (u) => u * 3],
      wgsl: { rel: 2e-5, abs: 0, why: "pow = exp2(b log2 a) amplifies log2's error by |b log a| <= 10" },
    },
  },
  // A tie sends the whole gradient to `a` (torch.maximum splits it; documented in `binary`).
  maximum: { ts: Math.max, wgsl: "max(a, b)", int: true, grad: (a, b, _y, g): [Tensor, Tensor] => [g.mul(a.ge(b)), g.mul(a.lt(b))], test: { ...plain, smooth: untied } },
  minimum: { ts: Math.min, wgsl: "min(a, b)", int: true, grad: (a, b, _y, g): [Tensor, Tensor] => [g.mul(b.ge(a)), g.mul(b.lt(a))], test: { ...plain, smooth: untied } },
  eq: { ts: (a, b) => (a === b ? 1 : 0), wgsl: "a == b", int: true, compare: true, grad: null, test: plain },
  gt: { ts: (a, b) => (a > b ? 1 : 0), wgsl: "a > b", int: true, compare: true, grad: null, test: plain },
  ge: { ts: (a, b) => (a >= b ? 1 : 0), wgsl: "a >= b", int: true, compare: true, grad: null, test: plain },
  lt: { ts: (a, b) => (a < b ? 1 : 0), wgsl: "a < b", int: true, compare: true, grad: null, test: plain },
} as const satisfies Record<string, BinaryDef>;

/** Elementwise functions of two broadcast arguments: the rows of BINARY. Comparisons return 1 or 0 in the operands' dtype. */
export type BinaryOp = keyof typeof BINARY;
/** Every binary op, in table order. */
export const BINARY_OPS = Object.keys(BINARY) as BinaryOp[];

/** The row of a unary op (typed as the general shape, for code that iterates the table). */
export const unaryDef = (op: UnaryOp): UnaryDef => UNARY[op];
/** The row of a binary op. */
export const binaryDef = (op: BinaryOp): BinaryDef => BINARY[op];
