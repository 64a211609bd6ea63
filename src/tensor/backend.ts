import type { DType, HostArray } from "./dtype.ts";
import type { BinaryOp, UnaryOp } from "./ops/pointwise_table.ts";
import type { HostWeight, WeightStorage } from "./weight.ts";

/**
 * The contract between tensors and devices.
 *
 * A `Tensor` is a view (shape, strides, offset) on a `Storage` that a backend owns. Backends
 * implement a small set of kernels over such views; every op of the tensor API, and every
 * backward rule, is written on top of them once, independent of the device. Kernels read
 * strided views (so transposes, slices and broadcasts by stride 0 cost no copy) and write
 * fresh contiguous storages, except `assign` and the optimizer steps, which write in place.
 *
 * Three backends implement it: `cpu` (src/kernels/cpu, plain TypeScript, the reference
 * numerics, f32/f64/i32), `wasm` (src/kernels/wasm, the cpu device with its storages in one
 * WebAssembly memory and SIMD kernels on worker threads where they pay) and `webgpu`
 * (src/kernels/webgpu, WGSL kernels through Dawn, f32/i32). Each kernel's CPU twin is the
 * specification of its WGSL.
 *
 * The contract has two parts. Ordinary methods: storages, the elementwise kernels of the
 * pointwise table, and packed-weight storage. Fused ops (matmul, softmax, cross-entropy,
 * embedding, RMSNorm, RoPE, attention, AdamW, ...) go through one method, `run(op, ...args)`:
 * each is a `DeviceOp` declared by the tensor-level op that calls it, with its geometry type
 * beside it (src/tensor/ops/*.ts, src/tensor/optim.ts), and implemented per device by its
 * kernel files (src/kernels/<op>.ts for cpu, <op>.wgsl.ts for webgpu), which register
 * themselves; no list of fused ops is written here or in any backend.
 *
 * Arguments: storages first, then one geometry object naming the sizes (`MatmulGeometry`,
 * `AttentionGeometry`, ...), so no call passes a long list of bare integers. Every device checks
 * a call's storage sizes against its geometry with the op's size check (beside its CPU
 * reference: ShapeError naming the op, the operand and both sizes) before any compute, and its
 * dtypes itself (DTypeError), then allocates the outputs the geometry implies.
 */

/** A device buffer. Backends subclass it; the tensor layer only counts references. */
export interface Storage {
  readonly dtype: DType;
  /** Number of elements. */
  readonly numel: number;
  /** Tensors (views) that still use this storage; the tensor layer frees it at zero. */
  refs: number;
  /** Set when freed; any use after that is an error. */
  freed: boolean;
}

/** A strided view of a storage, in elements. */
export interface View {
  readonly storage: Storage;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

/** Elementwise ops: the rows of the pointwise table. */
export type { BinaryOp, UnaryOp };

/**
 * A fused device op (matmul, softmax, RMSNorm, attention, ...): its name, and as types only
 * its operands `Args` (storages first, then one geometry object) and its result `Out`. The
 * tensor-level op that calls it declares it beside its geometry type (`rmsNormOp` in
 * src/tensor/ops/rmsnorm.ts); each device's kernel file registers its implementation under it
 * (src/kernels/registry.ts), and `Backend.run` runs that implementation.
 */
export interface DeviceOp<Args extends readonly unknown[], Out> {
  readonly name: string;
  /** Never set: carries the signature, so that `run` checks operands and result. */
  readonly signature?: (...args: Args) => Out;
}

/**
 * Declares a device op, e.g.
 * `deviceOp<[x: Storage, weight: Storage, g: RmsNormGeometry], Storage>("rmsNorm")`.
 * The returned object is the op's identity: kernels register under it, `run` looks it up.
 * @param name the op's name in error messages
 */
export function deviceOp<Args extends readonly unknown[], Out>(name: string): DeviceOp<Args, Out> {
  return { name };
}

/** Contiguous inputs are passed as bare storages; `View`s may be strided. */
export interface Backend {
  readonly name: "cpu" | "wasm" | "webgpu";
  /** Largest storage in bytes that one kernel binding may address. */
  readonly maxBindingBytes: number;
  /**
   * Bytes all of the device's storages share at most: the wasm device's one WebAssembly memory
   * (4 GiB at most, wasm32's address space); Infinity where the device states no such limit
   * (cpu: host memory; webgpu: WebGPU exposes no total).
   */
  readonly maxMemoryBytes: number;

  /** A zero-filled storage. */
  zeros(dtype: DType, numel: number): Storage;
  /** A storage holding a copy of `data`. */
  upload(data: HostArray): Storage;
  /** Copies `numel` elements starting at element `offset` back to the host. */
  read(storage: Storage, offset?: number, numel?: number): Promise<HostArray>;
  /**
   * The elements of a live storage without a copy when the device keeps them in host memory
   * (cpu, wasm), else null (webgpu: its values need the asynchronous `read`). For cheap host-side
   * checks of small inputs (token ids); callers must not write to the array.
   */
  peek(storage: Storage): HostArray | null;
  /** Releases the storage's memory (to a pool or to the system). */
  free(storage: Storage): void;
  /** Sets every element of a contiguous storage to `value`. */
  fill(storage: Storage, value: number): void;

  /** out[i] = f(x[i]) for a strided view, written contiguous. */
  unary(op: UnaryOp, x: View): Storage;
  /** out[i] = f(a[i], b[i]); `a` and `b` already have the output's shape (broadcast by stride 0). */
  binary(op: BinaryOp, a: View, b: View): Storage;
  /** out[i] = cond[i] != 0 ? a[i] : b[i]; all three views have the output's shape. */
  where(cond: View, a: View, b: View): Storage;
  /** Writes `src` into the strided view `dst` (same shape) in place. */
  assign(dst: View, src: View): void;
  /** Converts between f32/f64 and i32 (truncating toward zero). */
  cast(x: View, dtype: DType): Storage;

  /**
   * Runs a fused device op with its operands, e.g. `backend.run(rmsNormOp, x, weight, g)`,
   * on the implementation its kernel file registered for this device.
   * @throws DeviceError naming the op and the device when no kernel implements it there; the
   *   op's own ShapeError / DTypeError / DeviceLimitError for bad operands
   */
  run<Args extends readonly unknown[], Out>(op: DeviceOp<Args, Out>, ...args: Args): Out;

  /**
   * Uploads a packed weight [rows, cols] (bf16, f16 or NF4; see src/tensor/weight.ts) in its
   * stored form; the caller checked its sizes (assertHostWeight).
   * @throws DeviceLimitError when it does not fit one binding or the device's memory.
   */
  uploadWeight(w: HostWeight, rows: number, cols: number): WeightStorage;
  /** The dequantized values of a packed weight, row-major f32 [rows * cols], on the host. */
  readWeight(w: WeightStorage): Promise<Float32Array>;
  /** Releases a packed weight's memory. */
  freeWeight(w: WeightStorage): void;
  /** Waits until all queued work is done (no-op on cpu). */
  sync(): Promise<void>;
  /** Bytes currently held by live storages, for leak tests. */
  liveBytes(): number;
}
