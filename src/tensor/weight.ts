import type { Backend } from "./backend.ts";
import { DTypeError, DisposedError, ShapeError, fmt } from "./errors.ts";
import { track, type Disposable } from "./scope.ts";

/**
 * Frozen weight matrices stored on the device in a narrower form than f32: bf16 and f16 (two
 * bytes a weight, packed two per u32 on webgpu, a Uint16Array on cpu) and NF4 (bitsandbytes'
 * 4-bit NormalFloat: two weights a byte plus an f32 absmax per block of 64, 0.5625 bytes a
 * weight; see src/tensor/nf4.ts). The kernels that use a weight (the matmul x W^T and its input
 * gradient g W, the matrix-vector product of decoding, the embedding gather) read this form
 * and dequantize in registers, accumulating in f32: no f32 copy of the weight exists on the
 * device. Activations, LoRA weights, gradients and optimizer state stay f32 tensors.
 *
 * A PackedWeight is not a Tensor: it has no strides, no autograd of its own (it is frozen;
 * gradients flow through it to its input) and only the ops that take a weight accept it
 * (`linear` in src/tensor/ops/weights.ts, `embedding` in src/tensor/ops/embedding.ts).
 */

/** How a weight is stored: "f32" is an ordinary Tensor; the others are PackedWeights. */
export type WeightDType = "f32" | "bf16" | "f16" | "nf4";

/** Every weight dtype, in the order messages list them. */
export const WEIGHT_DTYPES: readonly WeightDType[] = ["f32", "bf16", "f16", "nf4"];

/** The packed weight dtypes. */
export type PackedDType = Exclude<WeightDType, "f32">;

/**
 * A weight's stored form in host memory, row-major over [rows, cols]:
 * - bf16 / f16: `bits` [rows * cols], the 16-bit patterns;
 * - nf4: `packed` [rows * cols / 2] bytes, element 2i in the high nibble of byte i, and
 *   `absmax` [rows * cols / 64], f32 (bitsandbytes' layout without double quantization).
 */
export type HostWeight = { dtype: "bf16" | "f16"; bits: Uint16Array } | { dtype: "nf4"; packed: Uint8Array; absmax: Float32Array };

/** A packed weight's device memory. Backends subclass it. */
export interface WeightStorage {
  readonly dtype: PackedDType;
  /** Output features (rows of W, or the vocabulary of an embedding table). */
  readonly rows: number;
  /** Input features (columns of W, the embedding width). */
  readonly cols: number;
  /** Bytes held on the device. */
  readonly bytes: number;
  freed: boolean;
}

/** Columns must be a multiple of this: kernels decode 8 weights (one NF4 u32 word, four 16-bit ones) at a time. */
export const WEIGHT_COL_MULTIPLE = 8;

/**
 * Device bytes of `n` weights stored as `dtype`: 4n (f32), 2n (16-bit), n / 2 + 4 ceil(n / 64)
 * (NF4's packed indices and f32 absmax: 0.5625 a weight), each part rounded up to whole 4-byte
 * words as the webgpu device allocates it (with n a multiple of 8, as packed weights are, the
 * rounding adds nothing and the cpu device holds the same bytes).
 */
export function weightBytes(dtype: WeightDType, n: number): number {
  const words = (bytes: number) => Math.ceil(bytes / 4) * 4;
  if (dtype === "f32") return 4 * n;
  if (dtype === "nf4") return words(Math.ceil(n / 2)) + 4 * Math.ceil(n / 64);
  return words(2 * n);
}

/**
 * Checks a weight dtype that came from a caller (CLI flag, JSON, plain JS).
 * @throws DTypeError naming `where`, the value and the choices.
 */
export function assertWeightDType(where: string, dtype: unknown): asserts dtype is WeightDType {
  if (typeof dtype === "string" && (WEIGHT_DTYPES as readonly string[]).includes(dtype)) return;
  throw new DTypeError(where, `unknown weight dtype ${JSON.stringify(dtype) ?? String(dtype)}; choose one of ${WEIGHT_DTYPES.join(", ")}`);
}

/**
 * Checks that a host weight holds exactly [rows, cols] and that cols suits the kernels.
 * @throws ShapeError naming `op`, the shape and the sizes found.
 */
export function assertHostWeight(op: string, w: HostWeight, rows: number, cols: number): void {
  if (cols % WEIGHT_COL_MULTIPLE !== 0) {
    throw new ShapeError(op, `a ${w.dtype} weight ${fmt([rows, cols])} needs a multiple of ${WEIGHT_COL_MULTIPLE} columns (load it as f32)`);
  }
  const n = rows * cols;
  const ok = w.dtype === "nf4" ? w.packed.length === n / 2 && w.absmax.length === Math.ceil(n / 64) : w.bits.length === n;
  if (!ok) throw new ShapeError(op, `${w.dtype} data does not hold a ${fmt([rows, cols])} weight`);
}

/** A frozen [rows, cols] weight stored packed on `backend`. Freed by dispose() (or its tidy scope). */
export class PackedWeight implements Disposable {
  disposed = false;
  /** Always false: a packed weight is frozen (QLoRA trains adapters beside it, never it). */
  requiresGrad: false = false;
  readonly shape: readonly [number, number];

  constructor(
    readonly backend: Backend,
    readonly storage: WeightStorage,
  ) {
    this.shape = [storage.rows, storage.cols];
    track(this);
  }

  /**
   * Uploads a host weight [rows, cols] to `backend`.
   * @throws ShapeError as assertHostWeight; DeviceLimitError when the device cannot hold it.
   */
  static upload(backend: Backend, w: HostWeight, rows: number, cols: number): PackedWeight {
    assertHostWeight("PackedWeight.upload", w, rows, cols);
    return new PackedWeight(backend, backend.uploadWeight(w, rows, cols));
  }

  get dtype(): PackedDType {
    return this.storage.dtype;
  }

  /** Throws DisposedError naming `op` after dispose(). */
  assertAlive(op: string): this {
    if (this.disposed || this.storage.freed) throw new DisposedError(op);
    return this;
  }

  /** The dequantized values [rows * cols], row-major f32 (computed on the host from the stored form). */
  async data(): Promise<Float32Array> {
    this.assertAlive("data");
    return this.backend.readWeight(this.storage);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.backend.freeWeight(this.storage);
  }
}
