import type { Backend, BinaryOp, DeviceOp, Storage, UnaryOp, View } from "../../tensor/backend.ts";
import type { DType, HostArray } from "../../tensor/dtype.ts";
import { DTypeError } from "../../tensor/errors.ts";
import { binaryDef, unaryDef } from "../../tensor/ops/pointwise_table.ts";
import { assertSameShape, contiguousStrides, numel } from "../../tensor/shape.ts";
import type { HostWeight, WeightStorage } from "../../tensor/weight.ts";
import * as checks from "../checks.ts";
import type { StridedOperand } from "../elementwise.wgsl.ts";
import { encodeAssign, encodeBinary, encodeCast, encodeFill, encodeUnary, encodeWhere } from "../elementwise.wgsl.ts";
import "../families.ts";
import { runKernel } from "../registry.ts";
import { WeightSpace } from "./weights.ts";
import { PipelineCache } from "./pipelines.ts";
import type { PooledBuffer } from "./pool.ts";
import type { AttentionVariant, Kernel, KernelHost, MatmulVariant, ParamValues } from "./program.ts";
import { CommandQueue } from "./queue.ts";
import { ErrorScopes } from "./scopes.ts";
import type { WebGpuStorage } from "./storage.ts";
import { StorageSpace } from "./storage.ts";
import { gpuTime } from "./timing.ts";
import type { VariantOptions } from "./variants.ts";
import { chooseVariants } from "./variants.ts";

export { WebGpuStorage } from "./storage.ts";

/**
 * The `webgpu` device: WGSL kernels (src/kernels/*.wgsl.ts) run through Dawn. This file holds
 * the storages, the elementwise kernels of the pointwise table and packed-weight storage; each
 * fused op's webgpu kernel is registered beside its WGSL (src/kernels/<op>.wgsl.ts: webgpu's
 * dtype and binding checks, the op's size check, the outputs, the encode), and `run` finds it
 * (src/kernels/registry.ts). The machinery lives beside this file, one job per file:
 * - queue.ts: recording, batching and submission, uniforms (CommandQueue);
 * - scopes.ts: Dawn's asynchronous validation errors (ErrorScopes);
 * - timing.ts: GPU time by timestamp queries;
 * - storage.ts: storages, chunking above the binding limit, upload and readback (StorageSpace);
 * - weights.ts: packed bf16/f16/NF4 weights (WeightSpace);
 * - variants.ts: which kernel variant runs on this adapter;
 * - pipelines.ts, pool.ts, program.ts: the pipeline cache, the buffer pool, the kernel description.
 *
 * Errors: a captured Dawn error becomes an Error naming the kernel(s), thrown by the next `read`
 * or `sync` (Dawn reports asynchronously), so no bare Dawn message reaches the process.
 */
export class WebGpuBackend implements Backend, KernelHost {
  readonly name = "webgpu";
  readonly maxBindingBytes: number;
  /** WebGPU states no total memory: each allocation fails on its own when the adapter is full. */
  readonly maxMemoryBytes = Infinity;
  readonly maxGridDim: number;
  readonly rowWorkgroup: number;
  readonly matmulVariant: MatmulVariant;
  readonly attentionVariant: AttentionVariant;
  private readonly scopes: ErrorScopes;
  private readonly pipelines: PipelineCache;
  private readonly queue: CommandQueue;
  /** Storages (for kernels: `whole`, `wholeFloat`, `output`, ... check and allocate operands). */
  readonly space: StorageSpace;
  /** False for a backend made by `withOptions`: the device belongs to the backend it came from. */
  private readonly ownsDevice: boolean;
  /** Packed weights (for kernels: `live` checks one). */
  readonly weights: WeightSpace;

  /**
   * @param gpu the GPU object the device came from, kept alive with it (Dawn frees the device
   *   with it); null for a device the caller opened and keeps
   * @param device a device created with the adapter's binding and buffer limits
   * @param opts.maxBindingBytes a lower per-binding limit (tests of chunked storages)
   * @param opts.rowWorkgroup, opts.matmulVariant, opts.attentionVariant forced kernel variants
   *   (defaults by adapter: see chooseVariants in variants.ts)
   * @param from internal, for `withOptions`: the backend whose device machinery this one shares
   * @throws RangeError for a bad rowWorkgroup, or a "quad" variant without the `subgroups` feature
   */
  constructor(
    readonly gpu: GPU | null,
    readonly device: GPUDevice,
    opts: VariantOptions & { maxBindingBytes?: number } = {},
    from?: WebGpuBackend,
  ) {
    ({ rowWorkgroup: this.rowWorkgroup, matmulVariant: this.matmulVariant, attentionVariant: this.attentionVariant } = chooseVariants(device, opts));
    this.ownsDevice = from === undefined;
    this.scopes = from?.scopes ?? new ErrorScopes(device);
    this.pipelines = from?.pipelines ?? new PipelineCache(device, (describe) => this.scopes.close(describe));
    this.queue = from?.queue ?? new CommandQueue(device, this.scopes, this.pipelines);
    this.space = new StorageSpace(device, this.queue, this.scopes, opts.maxBindingBytes);
    this.weights = new WeightSpace(device, this.queue, this.scopes, this.space);
    this.maxBindingBytes = this.space.maxBindingBytes;
    this.maxGridDim = this.queue.maxGridDim;
  }

  // ---- storages (storage.ts) ----

  zeros(dtype: DType, numel: number): Storage {
    return this.space.zeros(dtype, numel);
  }

  /** @throws DTypeError for Float64Array (webgpu has no f64). */
  upload(data: HostArray): Storage {
    return this.space.upload(data);
  }

  /** @throws RangeError when the range is outside the storage; the first error Dawn reported. */
  read(storage: Storage, offset = 0, numel = storage.numel - offset): Promise<HostArray> {
    return this.space.read(storage, offset, numel);
  }

  /** Always null: webgpu storages live in device memory (see `read`). */
  peek(): null {
    return null;
  }

  /** @throws DisposedError when already freed. */
  free(storage: Storage): void {
    this.space.free(storage);
  }

  fill(storage: Storage, value: number): void {
    const s = this.space.live("fill", storage);
    if (value === 0) {
      this.clear(s);
    } else {
      encodeFill(this, s, value);
    }
  }

  /** Queues zeroing every chunk of a live storage (kernels that accumulate into their output). */
  clear(s: WebGpuStorage): void {
    for (const ch of s.chunks) this.queue.clear(ch.buf);
  }

  liveBytes(): number {
    return this.space.buffers.inUseBytes + this.weights.liveBytes;
  }

  /** Pool counters: bytes in use by storages, held by the pool in total, and the peak in use; and the packed weights' bytes (outside the pool). */
  memoryStats(): { inUseBytes: number; allocatedBytes: number; peakBytes: number; weightBytes: number } {
    const pool = this.space.buffers;
    return { inUseBytes: pool.inUseBytes, allocatedBytes: pool.allocatedBytes, peakBytes: pool.peakBytes, weightBytes: this.weights.liveBytes };
  }

  /** Starts a new peak in `memoryStats().peakBytes` from the bytes in use now. */
  resetPeakBytes(): void {
    this.space.buffers.resetPeak();
  }

  /** GPU time in ms of the work `record` encodes, or null without `timestamp-query` (see timing.ts). */
  gpuTime(record: () => void): Promise<number | null> {
    return gpuTime(this.device, this.queue, this.scopes, record);
  }

  /** Number of distinct kernels compiled so far (each shader key compiles once). */
  compiledKernels(): number {
    return this.pipelines.size;
  }

  // ---- elementwise (chunked storages allowed) ----

  /** @throws DTypeError for i32 input to a float-only op. */
  unary(op: UnaryOp, x: View): Storage {
    const name = `unary ${op}`;
    const xo = this.operand(name, x);
    if (xo.data.dtype === "i32" && !unaryDef(op).int) throw new DTypeError(name, "not defined on i32");
    const out = this.space.chunked(name, xo.data.dtype, numel(x.shape));
    encodeUnary(this, op, xo, x.shape, out);
    return out;
  }

  /** @throws DTypeError when dtypes differ or i32 meets a float-only op; ShapeError when shapes differ. */
  binary(op: BinaryOp, a: View, b: View): Storage {
    const name = `binary ${op}`;
    const [ao, bo] = [this.operand(name, a), this.operand(name, b)];
    if (ao.data.dtype !== bo.data.dtype) throw new DTypeError(name, `dtypes differ: ${ao.data.dtype} vs ${bo.data.dtype}`);
    if (ao.data.dtype === "i32" && !binaryDef(op).int) throw new DTypeError(name, "not defined on i32");
    assertSameShape(name, a.shape, b.shape);
    const out = this.space.chunked(name, ao.data.dtype, numel(a.shape));
    encodeBinary(this, op, ao, bo, a.shape, out);
    return out;
  }

  where(cond: View, a: View, b: View): Storage {
    const [co, ao, bo] = [this.operand("where", cond), this.operand("where", a), this.operand("where", b)];
    if (ao.data.dtype !== bo.data.dtype) throw new DTypeError("where", `dtypes differ: ${ao.data.dtype} vs ${bo.data.dtype}`);
    assertSameShape("where", cond.shape, a.shape);
    assertSameShape("where", a.shape, b.shape);
    const out = this.space.chunked("where", ao.data.dtype, numel(a.shape));
    encodeWhere(this, co, ao, bo, a.shape, out);
    return out;
  }

  /** When dst and src share a storage, src is copied first (a kernel cannot read and write one buffer). */
  assign(dst: View, src: View): void {
    const [d, s] = [this.operand("assign", dst), this.operand("assign", src)];
    if (d.data.dtype !== s.data.dtype) throw new DTypeError("assign", `dtypes differ: ${d.data.dtype} vs ${s.data.dtype}`);
    assertSameShape("assign", dst.shape, src.shape);
    if (d.data !== s.data) {
      encodeAssign(this, d, s, dst.shape);
      return;
    }
    const copy = this.unary("copy", src) as WebGpuStorage;
    encodeAssign(this, d, { data: copy, strides: contiguousStrides(src.shape), offset: 0 }, dst.shape);
    this.free(copy);
  }

  cast(x: View, dtype: DType): Storage {
    const xo = this.operand("cast", x);
    const out = this.space.chunked("cast", dtype, numel(x.shape));
    encodeCast(this, xo, x.shape, out);
    return out;
  }

  // ---- fused ops: each registered beside its WGSL (src/kernels/<op>.wgsl.ts) ----

  run<Args extends readonly unknown[], Out>(op: DeviceOp<Args, Out>, ...args: Args): Out {
    return runKernel(op, this, ["webgpu"], args);
  }

  // ---- packed weights (weights.ts; their products and lookups: src/kernels/weights.wgsl.ts) ----

  /** @throws DeviceLimitError when a part exceeds the per-binding limit or the device's memory. */
  uploadWeight(w: HostWeight, rows: number, cols: number): WeightStorage {
    return this.weights.upload(w, rows, cols);
  }

  readWeight(w: WeightStorage): Promise<Float32Array> {
    return this.weights.read(w);
  }

  freeWeight(w: WeightStorage): void {
    this.weights.free(w);
  }

  /** Submits pending work, waits for the GPU, and throws any error Dawn reported. */
  sync(): Promise<void> {
    return this.queue.sync();
  }

  /**
   * Another backend on this one's device, with other kernel variants or a lower binding limit
   * (tests and benchmarks of the variants): it shares the queue, the error scopes and the
   * compiled pipelines (a kernel compiles once per device, and compiling is what costs on a CPU
   * adapter), and has its own storages (a storage belongs to the backend that made it).
   * @throws RangeError as the constructor
   */
  withOptions(opts: VariantOptions & { maxBindingBytes?: number }): WebGpuBackend {
    return new WebGpuBackend(this.gpu, this.device, opts, this);
  }

  /**
   * Waits for pending work and destroys the device; the backend is unusable afterwards. For a
   * backend from `withOptions` only the wait: the device stays with the backend it came from.
   */
  async destroy(): Promise<void> {
    await this.sync();
    if (this.ownsDevice) this.device.destroy();
  }

  // ---- KernelHost ----

  dispatch(k: Kernel, params: ParamValues, buffers: readonly PooledBuffer[], grid: number | readonly [number, number, number]): void {
    this.queue.dispatch(k, params, buffers, grid);
  }

  copy(src: PooledBuffer, srcByte: number, dst: PooledBuffer, dstByte: number, bytes: number): void {
    this.queue.copy(src.buffer, srcByte, dst.buffer, dstByte, bytes);
  }

  temp(bytes: number): PooledBuffer {
    return this.space.buffers.acquire(Math.max(bytes, 4)).pb;
  }

  releaseTemp(b: PooledBuffer): void {
    this.space.buffers.release(b);
  }

  // ---- argument checks particular to webgpu ----

  /** Live f32 storages in one chunk each, in the order of `named` (whose keys name them in errors). For kernels. */
  floats(op: string, named: Record<string, Storage>): WebGpuStorage[] {
    return Object.entries(named).map(([what, s]) => this.space.wholeFloat(op, what, s));
  }

  /**
   * A view as a kernel operand, after checking that every element it addresses lies inside its
   * storage (the extreme positions take each axis at 0 or at its end).
   * @throws ShapeError naming the op, the view and the storage size otherwise.
   */
  private operand(op: string, v: View): StridedOperand {
    const data = this.space.live(op, v.storage);
    checks.assertViewInBounds(op, v, data.numel);
    return { data, strides: v.strides, offset: v.offset };
  }
}
