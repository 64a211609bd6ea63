import { DTypeError, DeviceLimitError } from "./errors.ts";

/**
 * Element types. `f32` is the working precision on every device; `i32` holds token ids and
 * class indices; `f64` exists on the `cpu` device only, so that gradients can be checked by
 * finite differences in double precision.
 */
export type DType = "f32" | "f64" | "i32";

/** Every dtype, in the order messages list them. */
export const DTYPES: readonly DType[] = ["f32", "f64", "i32"];

/** Names from other libraries that users type for a qalign dtype (NumPy, PyTorch, C). */
const ALIASES: Record<string, DType> = {
  float32: "f32",
  float: "f32",
  float64: "f64",
  double: "f64",
  int32: "i32",
  int: "i32",
};

/** Half-precision names: safetensors files hold them, tensors do not. */
const HALF = ["f16", "bf16", "float16", "bfloat16", "half"];

/** The host array that holds the elements of each dtype. */
export type HostArray = Float32Array | Float64Array | Int32Array;

export type HostArrayFor<D extends DType> = D extends "f32"
  ? Float32Array
  : D extends "f64"
    ? Float64Array
    : Int32Array;

/**
 * Checks a dtype that came from a caller (TypeScript's types do not reach plain JS or JSON).
 * @throws DTypeError naming `op`, the dtype and the supported ones (with the qalign name of a
 *   NumPy/PyTorch spelling such as "int32"); f16 and bf16 are not tensor dtypes (checkpoints in
 *   them are converted to f32 on load).
 */
export function assertDType(op: string, dtype: unknown): asserts dtype is DType {
  if (typeof dtype === "string" && (DTYPES as readonly string[]).includes(dtype)) return;
  const name = typeof dtype === "string" ? dtype.toLowerCase() : "";
  const alias = Object.hasOwn(ALIASES, name) ? ALIASES[name] : undefined;
  const hint = alias
    ? ` (did you mean "${alias}"?)`
    : HALF.includes(name)
      ? " (half precision is a checkpoint format, read as f32 on load)"
      : "";
  throw new DTypeError(op, `unknown dtype ${JSON.stringify(dtype) ?? String(dtype)}${hint}; supported dtypes are ${DTYPES.join(", ")}`);
}

/** Bytes per element. */
export function itemSize(dtype: DType): number {
  return dtype === "f64" ? 8 : 4;
}

export function isFloat(dtype: DType): boolean {
  return dtype !== "i32";
}

/**
 * A zero-filled host array of `dtype` with `n` elements.
 * @throws DTypeError for an unknown dtype; DeviceLimitError when the JavaScript engine cannot
 *   allocate `n` elements (beyond its typed-array length limit, or out of memory).
 */
export function hostArray(dtype: DType, n: number): HostArray {
  assertDType("hostArray", dtype);
  try {
    if (dtype === "f32") return new Float32Array(n);
    if (dtype === "f64") return new Float64Array(n);
    return new Int32Array(n);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new DeviceLimitError("hostArray", `cannot allocate ${n} ${dtype} elements (${n * itemSize(dtype)} bytes) on the host: ${e.message}`);
  }
}

/** Whether `a` is one of the host arrays of a dtype (Float32Array, Float64Array, Int32Array). */
export function isHostArray(a: unknown): a is HostArray {
  return a instanceof Float32Array || a instanceof Float64Array || a instanceof Int32Array;
}

/**
 * The dtype whose host array `a` is.
 * @throws DTypeError for any other typed array (Uint8Array, Float16Array, ...), which no dtype holds.
 */
export function dtypeOf(a: HostArray): DType {
  if (a instanceof Float32Array) return "f32";
  if (a instanceof Float64Array) return "f64";
  if (a instanceof Int32Array) return "i32";
  const name = (a as object | null)?.constructor?.name ?? typeof a;
  throw new DTypeError("dtypeOf", `${name} holds no dtype; use a Float32Array (f32), Float64Array (f64) or Int32Array (i32)`);
}
