/**
 * Element types. `f32` is the working precision on every device; `i32` holds token ids and
 * class indices; `f64` exists on the `cpu` device only, so that gradients can be checked by
 * finite differences in double precision.
 */
export type DType = "f32" | "f64" | "i32";

/** The host array that holds the elements of each dtype. */
export type HostArray = Float32Array | Float64Array | Int32Array;

export type HostArrayFor<D extends DType> = D extends "f32"
  ? Float32Array
  : D extends "f64"
    ? Float64Array
    : Int32Array;

/** Bytes per element. */
export function itemSize(dtype: DType): number {
  return dtype === "f64" ? 8 : 4;
}

export function isFloat(dtype: DType): boolean {
  return dtype !== "i32";
}

/** A zero-filled host array of `dtype` with `n` elements. */
export function hostArray(dtype: DType, n: number): HostArray {
  if (dtype === "f32") return new Float32Array(n);
  if (dtype === "f64") return new Float64Array(n);
  return new Int32Array(n);
}

/** The dtype whose host array `a` is. */
export function dtypeOf(a: HostArray): DType {
  if (a instanceof Float32Array) return "f32";
  if (a instanceof Float64Array) return "f64";
  return "i32";
}
