import type {
  AdamWStep,
  AttentionBackwardInputs,
  AttentionGeometry,
  AttentionGrads,
  AttentionInputs,
  Backend,
  BinaryOp,
  CrossEntropyGeometry,
  EmbeddingGeometry,
  MatmulGeometry,
  ReduceOp,
  RmsNormGeometry,
  RopeGeometry,
  Storage,
  UnaryOp,
  View,
} from "../../tensor/backend.ts";
import type { DType, HostArray } from "../../tensor/dtype.ts";
import { DTypeError, DeviceLimitError, ShapeError } from "../../tensor/errors.ts";
import { binaryDef, unaryDef } from "../../tensor/ops/pointwise_table.ts";
import { assertSameShape, contiguousStrides, numel } from "../../tensor/shape.ts";
import { encodeAdamW } from "../adamw.wgsl.ts";
import { ATTENTION_MAX_DH, encodeAttention, encodeAttentionBackward } from "../attention.wgsl.ts";
import * as checks from "../checks.ts";
import { encodeCrossEntropy, encodeCrossEntropyBackward } from "../cross_entropy.wgsl.ts";
import type { StridedOperand } from "../elementwise.wgsl.ts";
import { encodeAssign, encodeBinary, encodeCast, encodeFill, encodeUnary, encodeWhere } from "../elementwise.wgsl.ts";
import { encodeGather, encodeScatterAdd } from "../embedding.wgsl.ts";
import { encodeMatmul } from "../matmul.wgsl.ts";
import type { HostWeight, WeightStorage } from "../../tensor/weight.ts";
import { encodeWeightGather, encodeWeightMatmul } from "../weights.wgsl.ts";
import { WeightSpace } from "./weights.ts";
import { encodeReduceRows } from "../reduce.wgsl.ts";
import { encodeRmsNorm } from "../rmsnorm.wgsl.ts";
import { encodeRope } from "../rope.wgsl.ts";
import { encodeSoftmax } from "../softmax.wgsl.ts";
import { PipelineCache } from "./pipelines.ts";
import type { PooledBuffer } from "./pool.ts";
import type { AttentionVariant, Kernel, KernelHost, MatmulVariant, ParamValues } from "./program.ts";
import { single } from "./program.ts";
import { CommandQueue } from "./queue.ts";
import { ErrorScopes } from "./scopes.ts";
import type { WebGpuStorage } from "./storage.ts";
import { StorageSpace, bytesOf } from "./storage.ts";
import { gpuTime } from "./timing.ts";
import type { VariantOptions } from "./variants.ts";
import { chooseVariants } from "./variants.ts";

export { WebGpuStorage } from "./storage.ts";

/**
 * The `webgpu` device: WGSL kernels (src/kernels/*.wgsl.ts) run through Dawn. This file adapts
 * each op of the Backend contract to its kernel file: it checks the call (the shared size checks
 * of src/kernels/checks.ts, then webgpu's dtype and binding limits), allocates the outputs and
 * encodes the kernel. The machinery lives beside it, one job per file:
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
  readonly maxGridDim: number;
  readonly rowWorkgroup: number;
  readonly matmulVariant: MatmulVariant;
  readonly attentionVariant: AttentionVariant;
  private readonly scopes: ErrorScopes;
  private readonly pipelines: PipelineCache;
  private readonly queue: CommandQueue;
  private readonly space: StorageSpace;
  /** False for a backend made by `withOptions`: the device belongs to the backend it came from. */
  private readonly ownsDevice: boolean;
  private readonly weights: WeightSpace;

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
      for (const ch of s.chunks) this.queue.clear(ch.buf);
    } else {
      encodeFill(this, s, value);
    }
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

  // ---- row kernels, matmul, nn ops (one chunk only, except gather's table and matmul's B) ----

  /** @throws ShapeError for max over empty rows, as the reference. */
  reduceRows(op: ReduceOp, x: Storage, rows: number, cols: number): Storage {
    const name = `reduce ${op}`;
    if (op === "max" && cols === 0 && rows > 0) throw new ShapeError(name, "rows are empty (cols = 0)");
    const xs = this.space.whole(name, "x", x);
    checks.rowOp(name, xs, rows, cols);
    const out = this.space.output(name, xs.dtype, rows);
    encodeReduceRows(this, op, xs, out, rows, cols);
    return out;
  }

  /**
   * B may be chunked (the lm_head weight) when batchStrideB is 0 or batch is 1.
   * @throws DeviceLimitError for a chunked A, a chunked batched B, or an output above one binding.
   */
  matmul(a: Storage, b: Storage, g: MatmulGeometry): Storage {
    const as = this.space.wholeFloat("matmul", "a", a);
    const bs = this.space.float("matmul", "b", b);
    const n = checks.matmul("matmul", as, bs, g);
    if (bs.chunks.length > 1 && g.batch > 1 && g.batchStrideB !== 0) {
      throw new DeviceLimitError("matmul", `batched b of ${bytesOf(bs.numel)} bytes exceeds the per-binding limit of ${this.maxBindingBytes} bytes`);
    }
    const out = this.space.output("matmul", "f32", n);
    encodeMatmul(this, as, bs, out, g);
    return out;
  }

  softmax(x: Storage, rows: number, cols: number, log: boolean): Storage {
    const xs = this.space.wholeFloat("softmax", "x", x);
    const out = this.space.output("softmax", "f32", checks.rowOp("softmax", xs, rows, cols));
    encodeSoftmax(this, xs, out, rows, cols, log);
    return out;
  }

  /** Targets outside [0, cols) (other than ignoreIndex) give loss 0 here; the cpu device throws. */
  crossEntropy(logits: Storage, targets: Storage, g: CrossEntropyGeometry): Storage {
    const op = "crossEntropy";
    const ls = this.space.wholeFloat(op, "logits", logits);
    const ts = this.space.wholeInt(op, "targets", targets);
    checks.crossEntropy(op, ls, ts, null, g);
    const out = this.space.output(op, "f32", g.rows);
    encodeCrossEntropy(this, ls, ts, out, g);
    return out;
  }

  /** Targets outside [0, cols) (other than ignoreIndex) give a zero row here; the cpu device throws. */
  crossEntropyBackward(logits: Storage, targets: Storage, gradLoss: Storage, g: CrossEntropyGeometry): Storage {
    const op = "crossEntropyBackward";
    const ls = this.space.wholeFloat(op, "logits", logits);
    const ts = this.space.wholeInt(op, "targets", targets);
    const gs = this.space.wholeFloat(op, "gradLoss", gradLoss);
    const out = this.space.output(op, "f32", checks.crossEntropy(op, ls, ts, gs, g));
    encodeCrossEntropyBackward(this, ls, ts, gs, out, g);
    return out;
  }

  /** The table may be chunked. Ids outside [0, V) give zero rows (the cpu device throws). */
  gather(table: Storage, ids: Storage, g: EmbeddingGeometry): Storage {
    const ts = this.space.live("gather", table);
    const is = this.space.wholeInt("gather", "ids", ids);
    const out = this.space.output("gather", ts.dtype, checks.gather("gather", ts, is, g));
    encodeGather(this, ts, is, out, g);
    return out;
  }

  /** Ids outside [0, V) are skipped (the cpu device throws). */
  scatterAdd(grad: Storage, ids: Storage, g: EmbeddingGeometry): Storage {
    const gs = this.space.whole("scatterAdd", "grad", grad);
    const is = this.space.wholeInt("scatterAdd", "ids", ids);
    const out = this.space.output("scatterAdd", gs.dtype, checks.scatterAdd("scatterAdd", gs, is, g));
    for (const ch of out.chunks) this.queue.clear(ch.buf);
    encodeScatterAdd(this, gs, is, out, g);
    return out;
  }

  // ---- packed weights (weights.ts, src/kernels/weights.wgsl.ts) ----

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

  matmulWeight(x: Storage, w: WeightStorage, M: number, form: "nt" | "nn"): Storage {
    const s = this.weights.live("matmulWeight", w);
    const xs = this.space.wholeFloat("matmulWeight", "x", x);
    const out = this.space.output("matmulWeight", "f32", checks.matmulWeight("matmulWeight", xs, s, M, form));
    encodeWeightMatmul(this, single(xs), s, single(out), M, form);
    return out;
  }

  /** Ids outside [0, V) give zero rows (the cpu device throws), as gather. */
  gatherWeight(w: WeightStorage, ids: Storage): Storage {
    const s = this.weights.live("gatherWeight", w);
    const is = this.space.wholeInt("gatherWeight", "ids", ids);
    const out = this.space.output("gatherWeight", "f32", is.numel * s.cols);
    encodeWeightGather(this, s, single(is), is.numel, single(out));
    return out;
  }

  rmsNorm(x: Storage, weight: Storage, g: RmsNormGeometry): Storage {
    const xs = this.space.wholeFloat("rmsNorm", "x", x);
    const ws = this.space.wholeFloat("rmsNorm", "weight", weight);
    const out = this.space.output("rmsNorm", "f32", checks.rmsNorm("rmsNorm", xs, ws, g));
    encodeRmsNorm(this, xs, ws, out, g);
    return out;
  }

  /** @throws ShapeError when Dh is odd or Bc is neither 1 nor B. */
  rope(x: Storage, cos: Storage, sin: Storage, g: RopeGeometry): Storage {
    const [xs, cs, ss] = this.floats("rope", { x, cos, sin });
    const out = this.space.output("rope", "f32", checks.rope("rope", xs!, cs!, ss!, g));
    encodeRope(this, xs!, cs!, ss!, out, g);
    return out;
  }

  /** keyMask may be f32 or i32 (nonzero = keep). @throws DeviceLimitError for Dh > 256. */
  attention(ins: AttentionInputs<Storage>, g: AttentionGeometry): { out: Storage; lse: Storage } {
    const op = "attention";
    const gpuIns = this.attentionOperands(op, ins, g);
    const n = checks.attention(op, gpuIns, g);
    const out = this.space.output(op, "f32", n.q);
    const lse = this.space.output(op, "f32", n.lse);
    encodeAttention(this, gpuIns, { out, lse }, g);
    return { out, lse };
  }

  /** @throws DeviceLimitError for Dh > 256. */
  attentionBackward(ins: AttentionBackwardInputs<Storage>, g: AttentionGeometry): AttentionGrads<Storage> {
    const op = "attentionBackward";
    const [out, dOut, lse] = this.floats(op, { out: ins.out, dOut: ins.dOut, lse: ins.lse });
    const gpuIns = { ...this.attentionOperands(op, ins, g), out: out!, dOut: dOut!, lse: lse! };
    const n = checks.attentionBackward(op, gpuIns, g);
    const grads = { dq: this.space.output(op, "f32", n.q), dk: this.space.output(op, "f32", n.kv), dv: this.space.output(op, "f32", n.kv) };
    encodeAttentionBackward(this, gpuIns, grads, g);
    return grads;
  }

  adamw(param: Storage, grad: Storage, m: Storage, v: Storage, h: AdamWStep): void {
    const [ps, gs, ms, vs] = this.floats("adamw", { param, grad, m, v });
    checks.adamw("adamw", ps!, { grad: gs!, m: ms!, v: vs! });
    encodeAdamW(this, ps!, gs!, ms!, vs!, h);
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

  /** Live f32 storages in one chunk each, in the order of `named` (whose keys name them in errors). */
  private floats(op: string, named: Record<string, Storage>): WebGpuStorage[] {
    return Object.entries(named).map(([what, s]) => this.space.wholeFloat(op, what, s));
  }

  /** q, k, v (f32, one chunk) and the key mask (any dtype, one chunk), for a head dim the kernels handle. */
  private attentionOperands(op: string, ins: AttentionInputs<Storage>, g: AttentionGeometry): AttentionInputs<WebGpuStorage> {
    if (g.Dh > ATTENTION_MAX_DH) throw new DeviceLimitError(op, `head dim ${g.Dh} > ${ATTENTION_MAX_DH}, the kernel's largest`);
    const [q, k, v] = this.floats(op, { q: ins.q, k: ins.k, v: ins.v });
    const keyMask = ins.keyMask === null ? null : this.space.whole(op, "keyMask", ins.keyMask);
    return { q: q!, k: k!, v: v!, keyMask };
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
