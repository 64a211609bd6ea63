import type { BinaryOp, UnaryOp } from "../tensor/backend.ts";

/**
 * The pointwise op table: each elementwise function once, as a TypeScript expression (the CPU
 * reference, evaluated in the storage's precision) and as a WGSL expression over `x` (unary) or
 * `a`, `b` (binary) in f32. Both backends generate their kernels from this table; the gradients
 * live in src/tensor/ops/pointwise.ts, written with tensor ops.
 */
export interface UnaryDef {
  ts: (x: number) => number;
  wgsl: string;
}

/** sqrt(2 / pi), for the tanh form of GELU. */
const GELU_C = 0.7978845608028654;

/**
 * tanh(x) written with exp so that WGSL and TypeScript agree at large |x|: WGSL's builtin tanh
 * may overflow on some drivers, so both clamp the argument to +-15 (tanh(15) = 1 - 2e-13).
 */
const WGSL_TANH = (e: string) => `tanh(clamp(${e}, -15.0, 15.0))`;

export const UNARY: Record<UnaryOp, UnaryDef> = {
  copy: { ts: (x) => x, wgsl: "x" },
  neg: { ts: (x) => -x, wgsl: "-x" },
  exp: { ts: Math.exp, wgsl: "exp(x)" },
  log: { ts: Math.log, wgsl: "log(x)" },
  sqrt: { ts: Math.sqrt, wgsl: "sqrt(x)" },
  rsqrt: { ts: (x) => 1 / Math.sqrt(x), wgsl: "inverseSqrt(x)" },
  abs: { ts: Math.abs, wgsl: "abs(x)" },
  sign: { ts: Math.sign, wgsl: "sign(x)" },
  // silu(x) = x * sigmoid(x) (Llama's MLP activation, "swish").
  silu: { ts: (x) => x / (1 + Math.exp(-x)), wgsl: "x / (1.0 + exp(-x))" },
  sigmoid: { ts: (x) => 1 / (1 + Math.exp(-x)), wgsl: "1.0 / (1.0 + exp(-x))" },
  tanh: { ts: (x) => Math.tanh(Math.max(-15, Math.min(15, x))), wgsl: WGSL_TANH("x") },
  // GELU, tanh form (PyTorch gelu(approximate="tanh")): 0.5 x (1 + tanh(c (x + 0.044715 x^3))).
  gelu: {
    ts: (x) => 0.5 * x * (1 + Math.tanh(Math.max(-15, Math.min(15, GELU_C * (x + 0.044715 * x * x * x))))),
    wgsl: `0.5 * x * (1.0 + ${WGSL_TANH(`${GELU_C} * (x + 0.044715 * x * x * x)`)})`,
  },
  relu: { ts: (x) => (x > 0 ? x : 0), wgsl: "max(x, 0.0)" },
  square: { ts: (x) => x * x, wgsl: "x * x" },
  reciprocal: { ts: (x) => 1 / x, wgsl: "1.0 / x" },
};

export interface BinaryDef {
  ts: (a: number, b: number) => number;
  wgsl: string;
  /** WGSL for i32 operands, where the op is defined on integers. */
  wgslInt?: string;
}

export const BINARY: Record<BinaryOp, BinaryDef> = {
  add: { ts: (a, b) => a + b, wgsl: "a + b", wgslInt: "a + b" },
  sub: { ts: (a, b) => a - b, wgsl: "a - b", wgslInt: "a - b" },
  mul: { ts: (a, b) => a * b, wgsl: "a * b", wgslInt: "a * b" },
  div: { ts: (a, b) => a / b, wgsl: "a / b" },
  pow: { ts: Math.pow, wgsl: "pow(a, b)" },
  maximum: { ts: Math.max, wgsl: "max(a, b)", wgslInt: "max(a, b)" },
  minimum: { ts: Math.min, wgsl: "min(a, b)", wgslInt: "min(a, b)" },
  eq: { ts: (a, b) => (a === b ? 1 : 0), wgsl: "select(0.0, 1.0, a == b)", wgslInt: "select(0, 1, a == b)" },
  gt: { ts: (a, b) => (a > b ? 1 : 0), wgsl: "select(0.0, 1.0, a > b)", wgslInt: "select(0, 1, a > b)" },
  ge: { ts: (a, b) => (a >= b ? 1 : 0), wgsl: "select(0.0, 1.0, a >= b)", wgslInt: "select(0, 1, a >= b)" },
  lt: { ts: (a, b) => (a < b ? 1 : 0), wgsl: "select(0.0, 1.0, a < b)", wgslInt: "select(0, 1, a < b)" },
};
