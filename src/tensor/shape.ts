import { DeviceLimitError, ShapeError, fmt } from "./errors.ts";

/** Node's `buffer` module where the host is Node (process.getBuiltinModule, Node >= 20.16), else undefined. */
const nodeBuffer = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process?.getBuiltinModule?.("node:buffer") as
  | { constants: { MAX_LENGTH: number } }
  | undefined;

/**
 * The most elements one tensor may have: the longest typed array this JavaScript engine allows,
 * since every storage is filled from or read into one host array. Node says it
 * (`buffer.constants.MAX_LENGTH`: 2^32 on Node 20; later engines allow more, up to
 * Number.MAX_SAFE_INTEGER); elsewhere (a browser, older Node 20) 2^32, what every current
 * engine allows. Nothing is imported, so the module loads in a browser.
 */
export const MAX_ELEMENTS = Math.min(nodeBuffer?.constants.MAX_LENGTH ?? 2 ** 32, Number.MAX_SAFE_INTEGER);

/** Number of elements of a shape (1 for a scalar `[]`). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major (C order) strides, in elements. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i]!;
  }
  return strides;
}

/** True when `strides` are the row-major strides of `shape` (size-1 axes may have any stride). */
export function isContiguous(shape: readonly number[], strides: readonly number[]): boolean {
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && strides[i] !== s) return false;
    s *= shape[i]!;
  }
  return true;
}

/**
 * NumPy broadcasting: shapes are aligned on the right; each pair of sizes must be equal or one
 * of them 1. Throws a ShapeError naming `op` and both shapes.
 */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeError(op, `cannot broadcast ${fmt(a)} with ${fmt(b)} (axis ${i}: ${da} vs ${db})`);
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Resolves a possibly negative axis against `rank`; throws naming `op` when out of range. */
export function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= Math.max(rank, 1)) {
    throw new ShapeError(op, `axis ${axis} out of range for rank ${rank}`);
  }
  return a;
}

/** Resolves a list of axes (default: all), sorted and without duplicates. */
export function normAxes(op: string, axes: number | readonly number[] | undefined, rank: number): number[] {
  if (axes === undefined) return Array.from({ length: rank }, (_, i) => i);
  const list = typeof axes === "number" ? [axes] : axes;
  const out = [...new Set(list.map((a) => normAxis(op, a, rank)))].sort((x, y) => x - y);
  return out;
}

/** Checks that two shapes are equal; throws naming `op` otherwise. */
export function assertSameShape(op: string, a: readonly number[], b: readonly number[]): void {
  if (a.length !== b.length || a.some((d, i) => d !== b[i])) {
    throw new ShapeError(op, `shapes differ: ${fmt(a)} vs ${fmt(b)}`);
  }
}

/**
 * Checks a shape that came from a caller, before anything is allocated: an array of sizes, each a
 * non-negative integer, with at most MAX_ELEMENTS elements in all. Every creation function
 * (tensor, zeros, full, randn, ...) and reshape call it.
 * @throws ShapeError naming `op`, the shape and the bad size and axis; DeviceLimitError naming
 *   the shape, its element count and MAX_ELEMENTS when no host array can hold it.
 */
export function assertValidShape(op: string, shape: readonly number[]): void {
  if (!Array.isArray(shape)) {
    throw new ShapeError(op, `shape must be an array of sizes, got ${JSON.stringify(shape) ?? String(shape)}`);
  }
  let n = 1;
  for (const [axis, d] of shape.entries()) {
    if (typeof d !== "number" || !Number.isInteger(d) || d < 0) {
      throw new ShapeError(op, `invalid shape ${fmt(shape)}: size ${d} at axis ${axis} is not a non-negative integer`);
    }
    n *= d;
  }
  if (n > MAX_ELEMENTS) {
    throw new DeviceLimitError(op, `shape ${fmt(shape)} has ${n} elements, more than the ${MAX_ELEMENTS} a tensor (one typed array) can hold`);
  }
}
