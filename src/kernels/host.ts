import type { Storage, View } from "../tensor/backend.ts";
import type { DType, HostArray } from "../tensor/dtype.ts";
import { dtypeOf, isFloat } from "../tensor/dtype.ts";
import { DTypeError, DisposedError } from "../tensor/errors.ts";
import type { HostWeight, PackedDType, WeightStorage } from "../tensor/weight.ts";
import { assertViewInBounds } from "./checks.ts";
import type { HostView } from "./elementwise.ts";

/**
 * Storages in host memory and the argument helpers of the kernels that run on them (the cpu
 * device, src/kernels/cpu.ts, and the wasm device, whose storages are views of its WebAssembly
 * memory). Each op's cpu kernel (beside its reference, src/kernels/<op>.ts) takes its host
 * arrays through these, so every host device checks dtypes and ownership the same way.
 */

/** A storage in host memory. `data` is dropped (emptied) when the storage is freed. */
export class CpuStorage implements Storage {
  readonly dtype: DType;
  readonly numel: number;
  refs = 0;
  freed = false;
  data: HostArray;

  constructor(data: HostArray) {
    this.data = data;
    this.dtype = dtypeOf(data);
    this.numel = data.length;
  }
}

/** A packed weight in host memory: the stored form itself (16-bit weights as a Uint16Array, NF4 as bytes + absmax). */
export class CpuWeightStorage implements WeightStorage {
  readonly dtype: PackedDType;
  readonly bytes: number;
  freed = false;

  constructor(
    public data: HostWeight,
    readonly rows: number,
    readonly cols: number,
  ) {
    this.dtype = data.dtype;
    this.bytes = data.dtype === "nf4" ? data.packed.byteLength + data.absmax.byteLength : data.bits.byteLength;
  }
}

/** The stored form of a live cpu weight; throws DisposedError naming `op` once it is freed. */
export function weightData(op: string, w: WeightStorage): CpuWeightStorage {
  if (!(w instanceof CpuWeightStorage)) throw new TypeError(`${op}: weight does not belong to the cpu backend`);
  if (w.freed) throw new DisposedError(op);
  return w;
}

/** The host array of a live cpu storage; throws DisposedError naming `op` once it is freed. */
export function hostData(op: string, s: Storage): HostArray {
  if (!(s instanceof CpuStorage)) throw new TypeError(`${op}: storage does not belong to the cpu backend`);
  if (s.freed) throw new DisposedError(op);
  return s.data;
}

/** Throws a DTypeError naming `op` and `what` unless `s` has dtype `dtype`. */
export function expectDType(op: string, what: string, s: Storage, dtype: DType): void {
  if (s.dtype !== dtype) throw new DTypeError(op, `${what} must be ${dtype}, got ${s.dtype}`);
}

/**
 * The host arrays of storages that must share one float dtype, the op's working dtype; throws a
 * DTypeError naming `op` otherwise.
 */
export function floatArgs(op: string, storages: readonly Storage[]): HostArray[] {
  const dtype = storages[0]!.dtype;
  if (!isFloat(dtype)) throw new DTypeError(op, `needs a float dtype, got ${dtype}`);
  for (const s of storages) {
    if (s.dtype !== dtype) throw new DTypeError(op, `dtypes differ: ${dtype} vs ${s.dtype}`);
  }
  return storages.map((s) => hostData(op, s));
}

/**
 * A `View` with its host data, after checking that every element it addresses lies inside its
 * storage (the lowest and highest reachable indices take each axis at 0 or at its end).
 */
export function hostView(op: string, v: View): HostView {
  const data = hostData(op, v.storage);
  assertViewInBounds(op, v, data.length);
  return { data, shape: v.shape, strides: v.strides, offset: v.offset };
}

