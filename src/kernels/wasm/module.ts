/**
 * A small WebAssembly module writer: the binary format's sections, LEB128 integers and the
 * opcodes the `wasm` device's kernels use, named, plus folded-expression helpers so a kernel
 * reads like its S-expression text form (`i32.add(get(x), i32.const(4))` emits the operands,
 * then the opcode). Source: the WebAssembly core specification 2.0, "Binary Format" (sections
 * 5.2-5.5), and the fixed-width SIMD proposal's opcode table (prefix 0xfd).
 *
 * Every module imports one memory, `env.memory` (shared when the device runs on threads), and
 * exports its functions by name. Kernels are generated once when the device starts; nothing
 * compiled is stored in the repository.
 */

/** Bytes of code: an instruction sequence, an expression or a whole section body. */
export type Code = readonly number[];

/** A value type, by its binary encoding. */
export const T = { i32: 0x7f, f32: 0x7d, v128: 0x7b } as const;
export type ValType = (typeof T)[keyof typeof T];

/** Unsigned LEB128 (spec 5.2.2): 7 bits per byte, low first, high bit set on all but the last. */
export function uleb(n: number): number[] {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`uleb: ${n} is not a non-negative integer`);
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}

/** Signed LEB128 of a 32-bit integer (two's complement, sign-extended from the last byte's bit 6). */
export function sleb(n: number): number[] {
  if (!Number.isInteger(n) || n < -(2 ** 31) || n >= 2 ** 32) throw new RangeError(`sleb: ${n} is not a 32-bit integer`);
  n |= 0;
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    const done = (n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0);
    out.push(done ? byte : byte | 0x80);
    if (done) return out;
  }
}

/** A name or byte vector: its length, then its UTF-8 bytes. */
function name(s: string): number[] {
  const bytes = [...new TextEncoder().encode(s)];
  return [...uleb(bytes.length), ...bytes];
}

/** A vector: its element count, then the elements. */
function vec(items: readonly Code[]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

/** Concatenates instruction sequences. */
export const seq = (...parts: Code[]): number[] => parts.flat();

/** A local (or parameter) of a function, by index. */
export interface Local {
  readonly index: number;
  readonly type: ValType;
}

// ---- instructions (spec 5.4), as folded expressions: operands first, then the opcode ----

const op1 = (opcode: number) => (...args: Code[]) => [...args.flat(), opcode];
const simd = (opcode: number) => (...args: Code[]) => [...args.flat(), 0xfd, ...uleb(opcode)];
/** A memory access: opcode, alignment (log2 bytes), constant byte offset. */
const mem = (prefix: number[], align: number) => (addr: Code, offset = 0) => [...addr, ...prefix, ...uleb(align), ...uleb(offset)];
const store = (prefix: number[], align: number) => (addr: Code, value: Code, offset = 0) => [
  ...addr,
  ...value,
  ...prefix,
  ...uleb(align),
  ...uleb(offset),
];

export const get = (l: Local): number[] => [0x20, ...uleb(l.index)];
export const set = (l: Local, value: Code): number[] => [...value, 0x21, ...uleb(l.index)];
/** `l += delta` for an i32 local. */
export const inc = (l: Local, delta: Code): number[] => set(l, i32.add(get(l), delta));

export const i32 = {
  const: (n: number) => [0x41, ...sleb(n)],
  load: mem([0x28], 2),
  store: store([0x36], 2),
  eqz: op1(0x45),
  /** The bits of an f32 as an i32. */
  reinterpret_f32: op1(0xbc),
  eq: op1(0x46),
  ne: op1(0x47),
  lt_s: op1(0x48),
  gt_s: op1(0x4a),
  le_s: op1(0x4c),
  ge_s: op1(0x4e),
  add: op1(0x6a),
  sub: op1(0x6b),
  mul: op1(0x6c),
  div_s: op1(0x6d),
  rem_s: op1(0x6f),
  and: op1(0x71),
  shl: op1(0x74),
  shr_u: op1(0x76),
};

export const f32 = {
  const: (x: number) => {
    const bytes = new Uint8Array(new Float32Array([x]).buffer);
    return [0x43, ...bytes];
  },
  load: mem([0x2a], 2),
  store: store([0x38], 2),
  lt: op1(0x5d),
  gt: op1(0x5e),
  add: op1(0x92),
  sub: op1(0x93),
  mul: op1(0x94),
  div: op1(0x95),
  /** An i32's bits as an f32. */
  reinterpret_i32: op1(0xbe),
  /** A signed i32's value as an f32 (rounded). */
  convert_i32_s: op1(0xb2),
};

export const v128 = {
  load: mem([0xfd, ...uleb(0x00)], 4),
  /** Loads one f32 (32 bits) and splats it to all four lanes. */
  load32_splat: mem([0xfd, ...uleb(0x09)], 2),
  /** Loads 32 bits into lane 0 (as bytes 0-3), the rest zero. */
  load32_zero: mem([0xfd, ...uleb(0x5c)], 2),
  /** Loads 64 bits into lanes 0-7 (bytes), the rest zero. */
  load64_zero: mem([0xfd, ...uleb(0x5d)], 3),
  store: store([0xfd, ...uleb(0x0b)], 4),
  zero: () => [0xfd, ...uleb(0x0c), ...new Array<number>(16).fill(0)],
  /** A constant vector of 16 bytes. */
  const: (bytes: readonly number[]) => [0xfd, ...uleb(0x0c), ...bytes],
  and: simd(0x4e),
  or: simd(0x50),
  /** Lane bits of a where mask bits are 1, else of b: bitselect(a, b, mask). */
  bitselect: simd(0x52),
};

export const f32x4 = {
  splat: simd(0x13),
  extract_lane: (v: Code, lane: number) => [...v, 0xfd, ...uleb(0x1f), lane],
  /** Lane-wise comparisons: all-ones lanes where true, zero where false (NaN compares false, except ne). */
  eq: simd(0x41),
  ne: simd(0x42),
  lt: simd(0x43),
  gt: simd(0x44),
  ge: simd(0x46),
  nearest: simd(0x6a),
  abs: simd(0xe0),
  neg: simd(0xe1),
  sqrt: simd(0xe3),
  add: simd(0xe4),
  sub: simd(0xe5),
  mul: simd(0xe6),
  div: simd(0xe7),
  /** IEEE minimum/maximum: NaN if either lane is NaN, -0 < +0. */
  min: simd(0xe8),
  max: simd(0xe9),
  /** Pseudo-maximum, as the SIMD proposal defines it: pmax(a, b) = a < b ? b : a. */
  pmax: simd(0xeb),
  /** Converts i32 lanes to f32 (rounded to nearest). */
  convert_i32x4_s: simd(0xfa),
  /** Relaxed SIMD: a * b + c, fused or not (the platform's choice). */
  relaxed_madd: simd(0x105),
};

/**
 * The f32 sum of the four lanes of v, as the tree (l0 + l1) + (l2 + l3). v's code is emitted once
 * per lane, so pass a local's get (or an expression cheap enough to repeat).
 */
export const sumLanes = (v: Code): number[] =>
  f32.add(f32.add(f32x4.extract_lane(v, 0), f32x4.extract_lane(v, 1)), f32.add(f32x4.extract_lane(v, 2), f32x4.extract_lane(v, 3)));

/** Calls function `index` of the module with the given arguments. */
export const call = (index: number, ...args: Code[]): number[] => [...args.flat(), 0x10, ...uleb(index)];

/** Bulk memory: sets `size` bytes at `dest` to the byte `value`. */
export const memoryFill = (dest: Code, value: Code, size: Code): number[] => [...dest, ...value, ...size, 0xfc, ...uleb(0x0b), 0x00];

/** Bulk memory: copies `size` bytes from `src` to `dest` (a memmove: the ranges may overlap). */
export const memoryCopy = (dest: Code, src: Code, size: Code): number[] => [...dest, ...src, ...size, 0xfc, ...uleb(0x0a), 0x00, 0x00];

/** `cond ? a : b` (both operands are evaluated). */
export const select = (a: Code, b: Code, cond: Code): number[] => [...a, ...b, ...cond, 0x1b];

export const i8x16 = {
  /** Bytes of a (lanes 0-15) and b (16-31) picked by 16 constant lane indices. */
  shuffle: (a: Code, b: Code, lanes: readonly number[]) => [...a, ...b, 0xfd, ...uleb(0x0d), ...lanes],
  /** Bytes of a picked by the byte lanes of s (an index >= 16 gives 0). */
  swizzle: simd(0x0e),
  shr_u: simd(0x6d),
};

export const i32x4 = {
  splat: simd(0x11),
  /** The low (lanes 0-3) or high (4-7) u16 lanes of an i16x8, zero-extended to i32. */
  extend_low_i16x8_u: simd(0xa9),
  extend_high_i16x8_u: simd(0xaa),
  add: simd(0xae),
  shl: simd(0xab),
  /** Converts f32 lanes to i32, saturating (NaN to 0). */
  trunc_sat_f32x4_s: simd(0xf8),
};

/**
 * exp of four f32 lanes: Cephes' expf (Moshier, "Methods and Programs for Mathematical
 * Functions", 1989): x = n ln 2 + r with n = round(x / ln 2), |r| <= ln 2 / 2, ln 2 split in
 * two constants so n ln 2 is exact; exp(r) by its degree-7 minimax polynomial; 2^n built in the
 * exponent bits. Relative error about 1 ulp on [-87.3, 88.7]; inputs are clamped there (exp of
 * -inf or of a very negative number gives 1.2e-38 instead of 0, 88.7 and above give +inf).
 * `x` is evaluated once into `t`; `n` and `r` are scratch v128 locals.
 */
export function expF32x4(x: Code, t: Local, n: Local, r: Local): number[] {
  const k = (c: number) => f32x4.splat(f32.const(c));
  const poly = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];
  let p: Code = k(poly[0]!);
  for (const c of poly.slice(1)) p = f32x4.add(f32x4.mul(p, get(r)), k(c));
  return seq(
    set(t, f32x4.min(f32x4.max(x, k(-87.33654)), k(88.72283))),
    set(n, f32x4.nearest(f32x4.mul(get(t), k(1.44269504088896341)))),
    set(r, f32x4.sub(f32x4.sub(get(t), f32x4.mul(get(n), k(0.693359375))), f32x4.mul(get(n), k(-2.12194440e-4)))),
    // p r^2 + r + 1, times 2^n (n + 127 in the exponent field)
    f32x4.mul(
      f32x4.add(f32x4.add(f32x4.mul(p, f32x4.mul(get(r), get(r))), get(r)), k(1)),
      i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(get(n)), i32x4.splat(i32.const(127))), i32.const(23)),
    ),
  );
}

/** Evaluates `e` and drops its value. */
export const drop = (e: Code): number[] => [...e, 0x1a];

/** `if (cond) { then } else { otherwise }`, no result value. */
export function ifElse(cond: Code, then: Code, otherwise: Code = []): number[] {
  return [...cond, 0x04, 0x40, ...then, ...(otherwise.length ? [0x05, ...otherwise] : []), 0x0b];
}

/**
 * `while (cond) { body }`: block { loop { br_if 1 (!cond); body; br 0 } }. The body must not
 * branch itself (every loop of the kernels is structured), so label depths stay internal.
 */
export function whileLoop(cond: Code, body: Code): number[] {
  return [0x02, 0x40, 0x03, 0x40, ...cond, 0x45, 0x0d, 1, ...body, 0x0c, 0, 0x0b, 0x0b];
}

/** `for (i = from; i < to; i += step) body` over i32, `to` re-evaluated each iteration. */
export function forRange(i: Local, from: Code, to: Code, step: Code, body: Code): number[] {
  return seq(set(i, from), whileLoop(i32.lt_s(get(i), to), seq(body, inc(i, step))));
}

/**
 * A thread's share of `units` work units, round-robin: `u` = tid, tid + threads, ... (the fixed
 * split every kernel uses, so which thread computes what never changes a result).
 */
export function forEachUnit(u: Local, units: Code, tid: Local, threads: Local, body: Code): number[] {
  return forRange(u, get(tid), units, get(threads), body);
}

// ---- functions and the module ----

/** Builds one function: parameters first, then locals added by `local`. */
export class FunctionBuilder {
  readonly params: Local[];
  private readonly locals: Local[] = [];

  constructor(
    readonly exportName: string,
    paramTypes: readonly ValType[],
    readonly resultTypes: readonly ValType[] = [],
  ) {
    this.params = paramTypes.map((type, index) => ({ index, type }));
  }

  /** A new local of `type`. */
  local(type: ValType): Local {
    const l = { index: this.params.length + this.locals.length, type };
    this.locals.push(l);
    return l;
  }

  /** The function's code entry (spec 5.5.13): its locals, run-length grouped, then the body. */
  encode(body: Code): number[] {
    const groups: Code[] = this.locals.map((l) => [...uleb(1), l.type]);
    const code = [...vec(groups), ...body, 0x0b];
    return [...uleb(code.length), ...code];
  }
}

/** A section: id, byte size, contents. */
function section(id: number, contents: Code): number[] {
  return [id, ...uleb(contents.length), ...contents];
}

/**
 * A module with one imported memory (`env.memory`, 1 to 65536 pages, shared or not) and the
 * given functions, each exported under its name.
 */
export function buildModule(shared: boolean, functions: readonly { fn: FunctionBuilder; body: Code }[]): Uint8Array {
  const types = functions.map(({ fn }) => [0x60, ...vec(fn.params.map((p) => [p.type])), ...vec(fn.resultTypes.map((t) => [t]))]);
  // Memory limits: flag 1 = max present, 2 = shared (threads proposal).
  const memoryImport = [...name("env"), ...name("memory"), 0x02, shared ? 0x03 : 0x01, ...uleb(1), ...uleb(65536)];
  const bytes = [
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, vec(types)),
    ...section(2, vec([memoryImport])),
    ...section(3, vec(functions.map((_, i) => uleb(i)))),
    ...section(7, vec(functions.map(({ fn }, i) => [...name(fn.exportName), 0x00, ...uleb(i)]))),
    ...section(10, vec(functions.map(({ fn, body }) => fn.encode(body)))),
  ];
  return new Uint8Array(bytes);
}

/** Whether this engine validates a module using relaxed SIMD's f32x4.relaxed_madd. */
export function hasRelaxedSimd(): boolean {
  const fn = new FunctionBuilder("f", []);
  const probe = buildModule(false, [{ fn, body: drop(f32x4.relaxed_madd(v128.zero(), v128.zero(), v128.zero())) }]);
  return WebAssembly.validate(probe);
}
