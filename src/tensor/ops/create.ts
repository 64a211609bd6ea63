import type { Backend } from "../backend.ts";
import { defaultDevice } from "../device.ts";
import { assertDType, dtypeOf, hostArray, isHostArray, type DType, type HostArray } from "../dtype.ts";
import { DTypeError, ShapeError, fmt } from "../errors.ts";
import { Rng } from "../random.ts";
import { assertValidShape, numel } from "../shape.ts";
import { Tensor } from "../tensor.ts";

/**
 * Where and how to create a tensor. Defaults: the default device, dtype f32, no grad.
 * Every creation function checks `dtype` (DTypeError for a name other than f32, f64, i32) and the
 * shape (ShapeError for a negative or fractional size, DeviceLimitError beyond MAX_ELEMENTS in
 * shape.ts) before it allocates anything.
 */
export interface CreateOptions {
  device?: Backend;
  dtype?: DType;
  requiresGrad?: boolean;
}

type Nested = number | readonly Nested[];

/** The shape of a rectangular nested array; throws ShapeError when ragged. */
function nestedShape(x: Nested): number[] {
  const shape: number[] = [];
  let cur: Nested = x;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = (cur as readonly Nested[])[0] ?? 0;
  }
  return shape;
}

function flatten(x: Nested, shape: readonly number[], depth: number, out: number[]): void {
  if (depth === shape.length) {
    if (typeof x !== "number") throw new ShapeError("tensor", `ragged nested array: expected a number at depth ${depth}`);
    out.push(x);
    return;
  }
  if (!Array.isArray(x) || x.length !== shape[depth]) {
    throw new ShapeError("tensor", `ragged nested array: expected length ${shape[depth]} at depth ${depth}`);
  }
  for (const v of x as readonly Nested[]) flatten(v, shape, depth + 1, out);
}

/**
 * A tensor from a number, a nested array, or a flat host array with an explicit shape.
 * @example tensor([[1, 2], [3, 4]]) // f32 [2, 2]
 * @example tensor(new Int32Array([5, 17, 42]), { shape: [1, 3] }) // i32 [1, 3]
 * @throws ShapeError when the data's length disagrees with `shape`, a nested array is ragged or
 *   `shape` is invalid; DTypeError for an unknown dtype or a typed array other than Float32Array,
 *   Float64Array, Int32Array.
 */
export function tensor(data: Nested | HostArray, opts: CreateOptions & { shape?: readonly number[] } = {}): Tensor {
  if (opts.dtype !== undefined) assertDType("tensor", opts.dtype);
  if (opts.shape !== undefined) assertValidShape("tensor", opts.shape);
  const device = opts.device ?? defaultDevice();
  let host: HostArray;
  let shape: readonly number[];
  if (ArrayBuffer.isView(data)) {
    if (!isHostArray(data)) {
      throw new DTypeError("tensor", `${(data as ArrayBufferView).constructor.name} holds no dtype; pass a Float32Array (f32), Float64Array (f64), Int32Array (i32) or a plain array`);
    }
    const dtype = opts.dtype ?? dtypeOf(data);
    host = dtype === dtypeOf(data) ? data : hostArray(dtype, data.length);
    if (host !== data) host.set(data);
    shape = opts.shape ?? [data.length];
  } else {
    shape = opts.shape ?? nestedShape(data);
    const flat: number[] = [];
    flatten(data, opts.shape ? nestedShape(data) : shape, 0, flat);
    host = hostArray(opts.dtype ?? "f32", flat.length);
    host.set(flat);
  }
  assertValidShape("tensor", shape);
  if (numel(shape) !== host.length) {
    throw new ShapeError("tensor", `${host.length} values do not fill shape ${fmt(shape)}`);
  }
  const t = Tensor.fromStorage(device, device.upload(host), shape);
  t.requiresGrad = opts.requiresGrad ?? false;
  return t;
}

/**
 * A tensor of `shape` filled with `value` (filled on the device: nothing is uploaded).
 * @throws ShapeError for an invalid shape; DTypeError for an unknown dtype.
 */
export function full(shape: readonly number[], value: number, opts: CreateOptions = {}): Tensor {
  return filled("full", shape, value, opts);
}

/** zeros of `shape`; see full. */
export function zeros(shape: readonly number[], opts: CreateOptions = {}): Tensor {
  return filled("zeros", shape, 0, opts);
}

/** ones of `shape`; see full. */
export function ones(shape: readonly number[], opts: CreateOptions = {}): Tensor {
  return filled("ones", shape, 1, opts);
}

/** full, with the caller's name in messages. */
function filled(op: string, shape: readonly number[], value: number, opts: CreateOptions): Tensor {
  assertValidShape(op, shape);
  const dtype = opts.dtype ?? "f32";
  assertDType(op, dtype);
  const device = opts.device ?? defaultDevice();
  const storage = device.zeros(dtype, numel(shape));
  if (value !== 0) device.fill(storage, value);
  const t = Tensor.fromStorage(device, storage, shape);
  t.requiresGrad = opts.requiresGrad ?? false;
  return t;
}

/** `value` in the shape, dtype and device of `like`. */
export function fullLike(like: Tensor, value: number, shape: readonly number[] = like.shape): Tensor {
  return full(shape, value, { device: like.backend, dtype: like.dtype });
}

/**
 * [start, start + step, ...) below `end`, like numpy.arange; i32 unless a dtype is given.
 * @throws RangeError when step is 0 or a bound is not finite; DeviceLimitError for more than
 *   MAX_ELEMENTS values.
 */
export function arange(start: number, end: number, step = 1, opts: CreateOptions = {}): Tensor {
  if (step === 0) throw new RangeError("arange: step must not be 0");
  if (![start, end, step].every(Number.isFinite)) throw new RangeError(`arange: start, end and step must be finite, got ${start}, ${end}, ${step}`);
  if (opts.dtype !== undefined) assertDType("arange", opts.dtype);
  const n = Math.max(0, Math.ceil((end - start) / step));
  assertValidShape("arange", [n]);
  const host = hostArray(opts.dtype ?? "i32", n);
  for (let i = 0; i < n; i++) host[i] = start + i * step;
  return tensor(host, { ...opts, shape: [n] });
}

/**
 * Seeded standard-normal samples times `std` (xoshiro128** + Box-Muller, see random.ts).
 * @throws ShapeError for an invalid shape; DTypeError for an unknown or integer dtype.
 */
export function randn(shape: readonly number[], opts: CreateOptions & { seed?: number; rng?: Rng; std?: number } = {}): Tensor {
  assertValidShape("randn", shape);
  const dtype = opts.dtype ?? "f32";
  assertDType("randn", dtype);
  if (dtype === "i32") throw new DTypeError("randn", "needs a float dtype");
  const rng = opts.rng ?? new Rng(opts.seed ?? 0);
  const host = hostArray(dtype, numel(shape));
  const std = opts.std ?? 1;
  for (let i = 0; i < host.length; i++) host[i] = rng.normal() * std;
  return tensor(host, { ...opts, shape });
}

/**
 * Seeded uniform samples in [low, high).
 * @throws ShapeError for an invalid shape; DTypeError for an unknown or integer dtype.
 */
export function rand(
  shape: readonly number[],
  opts: CreateOptions & { seed?: number; rng?: Rng; low?: number; high?: number } = {},
): Tensor {
  assertValidShape("rand", shape);
  const dtype = opts.dtype ?? "f32";
  assertDType("rand", dtype);
  if (dtype === "i32") throw new DTypeError("rand", "needs a float dtype");
  const rng = opts.rng ?? new Rng(opts.seed ?? 0);
  const low = opts.low ?? 0;
  const high = opts.high ?? 1;
  const host = hostArray(dtype, numel(shape));
  for (let i = 0; i < host.length; i++) host[i] = low + (high - low) * rng.uniform();
  return tensor(host, { ...opts, shape });
}
