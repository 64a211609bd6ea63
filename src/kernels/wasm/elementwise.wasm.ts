import type { BinaryOp, UnaryOp } from "../../tensor/backend.ts";
import type { Code, Local } from "./module.ts";
import { FunctionBuilder, T, buildModule, expF32x4, f32, f32x4, forRange, get, i32, i32x4, ifElse, inc, seq, set, v128, whileLoop } from "./module.ts";

/**
 * Elementwise kernels of the `wasm` device (one WebAssembly SIMD module, f32): each op of the
 * pointwise table (src/kernels/pointwise.ts) that has a short SIMD form, as
 *   op(out, a, b, n0, n1, n2, n3, so0..so3, sa0..sa3, sb0..sb3, tid, threads):
 *   out[i0, i1, i2, i3] = f(a[...], b[...]) over a 4-d iteration space, every operand with its
 *   own element strides (0 broadcasts; out strided too, for assign). Unary ops ignore b; where
 *   takes three operands, where(out, cond, a, b, n0..n3, so, sc, sa, sb, tid, threads).
 * The caller collapses views to at most 4 dims. Work units are (row i0 i1 i2, chunk of CHUNK
 * elements of i3), round-robin between threads; where the inner strides are 1 (or 0: a splat)
 * 4 elements go per vector, the rest one at a time through lane 0 of the same expression, so an
 * element's value never depends on where it falls.
 *
 * The casts between f32 and i32 (WASM_CAST) are unary kernels of the same form.
 *
 * Ops with transcendentals use Cephes' expf (expF32x4, ~1 ulp): exp, sigmoid, silu. The others
 * (comparisons included: 1 or 0) are exact IEEE f32 operations, as the reference rounds them.
 */

/** Inner-dimension elements per work unit. */
const CHUNK = 4096;

type Vec = (a: Code, b: Code, tmp: readonly Local[]) => Code;

const one = () => f32x4.splat(f32.const(1));
const { abs, neg, sqrt, div } = f32x4;
/** 1 / (1 + exp(-x)), x evaluated once (it is a local's get). */
const sigmoid = (x: Code, tmp: readonly Local[]) => div(one(), f32x4.add(one(), expF32x4(neg(x), tmp[0]!, tmp[1]!, tmp[2]!)));

/** The unary ops with a SIMD form (x is a local's get, safe to repeat). */
export const WASM_UNARY: Partial<Record<UnaryOp, Vec>> = {
  copy: (a) => a,
  neg: (a) => neg(a),
  abs: (a) => abs(a),
  sqrt: (a) => sqrt(a),
  rsqrt: (a) => div(one(), sqrt(a)),
  square: (a) => f32x4.mul(a, a),
  reciprocal: (a) => div(one(), a),
  // max propagates NaN and takes +0 over -0: x <= 0 ? 0 : x, the reference's rule exactly.
  relu: (a) => f32x4.max(v128.zero(), a),
  exp: (a, _b, t) => expF32x4(a, t[0]!, t[1]!, t[2]!),
  sigmoid: (a, _b, t) => sigmoid(a, t),
  silu: (a, _b, t) => f32x4.mul(a, sigmoid(a, t)),
};

/** 1 where a lane of the comparison mask `m` is set, else 0 (the table's comparisons return 1 or 0 in the operands' dtype). */
const oneWhere = (m: Code) => v128.and(m, one());

/** The binary ops with a SIMD form (pow stays on the reference). */
export const WASM_BINARY: Partial<Record<BinaryOp, Vec>> = {
  add: (a, b) => f32x4.add(a, b),
  sub: (a, b) => f32x4.sub(a, b),
  mul: (a, b) => f32x4.mul(a, b),
  div: (a, b) => div(a, b),
  // pmax/pmin would differ from Math.max on NaN and signed zeros; f32x4.max/min propagate NaN as Math.max does.
  maximum: (a, b) => f32x4.max(a, b),
  minimum: (a, b) => f32x4.min(a, b),
  // IEEE comparisons, as JS's: false whenever a NaN is involved.
  eq: (a, b) => oneWhere(f32x4.eq(a, b)),
  gt: (a, b) => oneWhere(f32x4.gt(a, b)),
  ge: (a, b) => oneWhere(f32x4.ge(a, b)),
  lt: (a, b) => oneWhere(f32x4.lt(a, b)),
};

/**
 * The casts with a SIMD form, by source and target dtype (the lanes' bits pass through loads,
 * splats and stores unchanged, so the same walk moves i32 lanes): f32 -> i32 truncates toward
 * zero, saturates to [-2^31, 2^31 - 1] and takes NaN to 0 (i32x4.trunc_sat_f32x4_s, exactly
 * the reference's toInt32); i32 -> f32 rounds to nearest even, as a Float32Array store does.
 */
export const WASM_CAST = {
  f32_i32: (a: Code) => i32x4.trunc_sat_f32x4_s(a),
  i32_f32: (a: Code) => f32x4.convert_i32x4_s(a),
} as const;

/** Export name of a cast's kernel, `cast_f32_i32` or `cast_i32_f32`. */
export const castExport = (cast: keyof typeof WASM_CAST) => `cast_${cast}` as const;

/** Export name of an op's kernel. */
export const elementwiseExport = (kind: "unary" | "binary", op: string) => `${kind}_${op}`;

/**
 * The kernel `name` computing out = f(inputs) for `inputs` operands (2 for unary and binary ops,
 * unary ones ignoring the second; 3 for where), as the header describes.
 */
function mapKernel(name: string, inputs: number, f: (vals: Code[], tmp: readonly Local[]) => Code): { fn: FunctionBuilder; body: Code } {
  // out, the inputs, n0..n3, out's strides, each input's strides, tid, threads
  const fn = new FunctionBuilder(name, new Array(1 + inputs + 4 + 4 + 4 * inputs + 2).fill(T.i32));
  const p = fn.params;
  const out = p[0]!;
  const src = p.slice(1, 1 + inputs);
  const n = p.slice(1 + inputs, 5 + inputs);
  const so = p.slice(5 + inputs, 9 + inputs);
  const ss = src.map((_, i) => p.slice(9 + inputs + 4 * i, 13 + inputs + 4 * i));
  const [tid, threads] = [p[p.length - 2]!, p[p.length - 1]!];
  const I = () => fn.local(T.i32);
  const [chunks, units, u, r, e, end, po, t, i0, i1, i2] = Array.from({ length: 11 }, I) as Local[];
  const ptrs = src.map(() => fn.local(T.i32));
  const vals = src.map(() => fn.local(T.v128));
  const tmp = [fn.local(T.v128), fn.local(T.v128), fn.local(T.v128)];
  const c = i32.const;
  const offset = (s: Local[]) => i32.shl(i32.add(i32.add(i32.mul(get(i0!), get(s[0]!)), i32.mul(get(i1!), get(s[1]!))), i32.add(i32.mul(get(i2!), get(s[2]!)), i32.mul(get(e!), get(s[3]!)))), c(2));
  const values = () => vals.map((v) => get(v));
  /** The vector loop for one choice of loads (v128.load for stride 1, a splat for stride 0). */
  const vectorLoop = (splat: readonly boolean[]) =>
    whileLoop(
      i32.le_s(i32.add(get(e!), c(4)), get(end!)),
      seq(
        ...vals.map((v, i) => set(v, splat[i] ? v128.load32_splat(get(ptrs[i]!)) : v128.load(get(ptrs[i]!)))),
        v128.store(get(po!), f(values(), tmp)),
        inc(po!, c(16)),
        ...ptrs.flatMap((q, i) => (splat[i] ? [] : [inc(q, c(16))])),
        inc(e!, c(4)),
      ),
    );
  const is = (s: Local, v: number) => i32.eq(get(s), c(v));
  // Operand by operand: inner stride 1 or 0 picks its load; any other stride, no vector loop.
  const choose = (i: number, splat: readonly boolean[]): Code =>
    i === inputs ? vectorLoop(splat) : ifElse(is(ss[i]![3]!, 1), choose(i + 1, [...splat, false]), ifElse(is(ss[i]![3]!, 0), choose(i + 1, [...splat, true])));
  const vectorPart = ifElse(is(so[3]!, 1), choose(0, []));
  const scalarPart = whileLoop(
    i32.lt_s(get(e!), get(end!)),
    seq(
      ...vals.map((v, i) => set(v, f32x4.splat(f32.load(get(ptrs[i]!))))),
      f32.store(get(po!), f32x4.extract_lane(f(values(), tmp), 0)),
      inc(po!, i32.shl(get(so[3]!), c(2))),
      ...ptrs.map((q, i) => inc(q, i32.shl(get(ss[i]![3]!), c(2)))),
      inc(e!, c(1)),
    ),
  );
  const body = seq(
    set(chunks!, i32.div_s(i32.add(get(n[3]!), c(CHUNK - 1)), c(CHUNK))),
    set(units!, i32.mul(i32.mul(i32.mul(get(n[0]!), get(n[1]!)), get(n[2]!)), get(chunks!))),
    forRange(
      u!,
      get(tid),
      get(units!),
      get(threads),
      seq(
        set(r!, i32.div_s(get(u!), get(chunks!))),
        set(e!, i32.mul(i32.rem_s(get(u!), get(chunks!)), c(CHUNK))),
        set(end!, i32.add(get(e!), c(CHUNK))),
        ifElse(i32.gt_s(get(end!), get(n[3]!)), set(end!, get(n[3]!))),
        set(i2!, i32.rem_s(get(r!), get(n[2]!))),
        set(t!, i32.div_s(get(r!), get(n[2]!))),
        set(i1!, i32.rem_s(get(t!), get(n[1]!))),
        set(i0!, i32.div_s(get(t!), get(n[1]!))),
        set(po!, i32.add(get(out), offset(so))),
        ...ptrs.map((q, i) => set(q, i32.add(get(src[i]!), offset(ss[i]!)))),
        vectorPart,
        scalarPart,
      ),
    ),
  );
  return { fn, body };
}

/** where(cond, a, b): a where cond != 0 (NaN counts as nonzero, -0 as zero, as the reference's !== 0), else b. */
const whereLanes = (vals: Code[]) => v128.bitselect(vals[1]!, vals[2]!, f32x4.ne(vals[0]!, v128.zero()));

/** Export name of the where kernel. */
export const WHERE_EXPORT = "where";

/**
 * The module: one kernel per op of WASM_UNARY and WASM_BINARY, exported as
 * elementwiseExport(kind, op), then where (WHERE_EXPORT), then one per cast of WASM_CAST
 * (castExport; unary in form).
 */
export function elementwiseModule(shared: boolean): Uint8Array {
  const kernels = [
    ...Object.entries(WASM_UNARY).map(([op, f]) => mapKernel(elementwiseExport("unary", op), 2, ([a, b], tmp) => f!(a!, b!, tmp))),
    ...Object.entries(WASM_BINARY).map(([op, f]) => mapKernel(elementwiseExport("binary", op), 2, ([a, b], tmp) => f!(a!, b!, tmp))),
    mapKernel(WHERE_EXPORT, 3, whereLanes),
    ...(Object.keys(WASM_CAST) as (keyof typeof WASM_CAST)[]).map((cast) => mapKernel(castExport(cast), 2, ([a]) => WASM_CAST[cast](a!))),
  ];
  return buildModule(shared, kernels);
}
